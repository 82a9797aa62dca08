//! The report facts: a compact projection of the resources measures read —
//! Patient, Encounter, Condition, Organization — grouped per person through
//! the master patient index, kept in memory and refreshed incrementally from
//! the store before every evaluation.
//!
//! Why: a measure over 100,000 patients must not re-read and re-parse every
//! stored resource (hundreds of MB of JSON). The first evaluation reads the
//! four types once with keyset-paged queries (`rkey > ?`, a page at a time,
//! so memory holds the compact facts, not the pages); later evaluations read
//! only the rows whose history key (`history.hkey`) is above the watermark
//! seen last, and re-read the MPI groups (`mpi_patient`) when a Patient or
//! Person changed. Each fact is the resource reduced to the elements listed
//! in [`KEEP`] (the "report facts projection"), parsed once when read and
//! kept parsed, so an evaluation only walks it (on all cores). Memory: about
//! 1.5–3 KiB per fact (serde_json objects with their key order), reported by
//! `carebridge bench report`.
//!
//! Measures see exactly these elements: an expression navigating to an
//! element outside the projection gets empty (README, "Measures").
//!
//! Invariant: a report reflects every write committed before its refresh
//! started. On PostgreSQL history keys come from a sequence, so a
//! transaction may commit with a key below the watermark after a refresh;
//! each refresh re-reads the last [`OVERLAP`] history keys to catch those
//! (applying a row twice is harmless).

use crate::store::{ResourceRow, Sql, SqlValue, Store, StoreError, RESOURCE_COLUMNS};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// History keys re-read below the watermark on every refresh (PostgreSQL commit order).
pub const OVERLAP: i64 = 1000;
const PAGE: i64 = 5000;

/// The elements kept per type (top level; nested objects are kept whole,
/// except `Patient.address`, reduced to [`ADDRESS_KEEP`]).
pub const KEEP: &[(&str, &[&str])] = &[
    ("Patient", &["resourceType", "id", "gender", "birthDate", "deceasedBoolean", "deceasedDateTime", "address", "managingOrganization", "generalPractitioner", "link"]),
    ("Encounter", &["resourceType", "id", "status", "class", "type", "serviceType", "priority", "subject", "period", "length", "reasonCode", "diagnosis", "hospitalization", "serviceProvider", "partOf", "basedOn"]),
    ("Condition", &["resourceType", "id", "clinicalStatus", "verificationStatus", "category", "severity", "code", "subject", "encounter", "onsetDateTime", "onsetPeriod", "onsetAge", "abatementDateTime", "abatementPeriod", "recordedDate"]),
    ("Organization", &["resourceType", "id", "active", "type", "name", "partOf", "address"]),
];
pub const ADDRESS_KEEP: &[&str] = &["use", "type", "city", "district", "state", "postalCode", "country"];

pub const TYPES: [&str; 4] = ["Patient", "Encounter", "Condition", "Organization"];

/// One resource in the projection.
#[derive(Debug)]
pub struct Fact {
    pub rtype: &'static str,
    pub id: String,
    /// the Patient id the fact belongs to (Patient: itself)
    pub patient: Option<String>,
    /// the projection
    pub json: Value,
}

/// One person: their Patient records at every institution and what belongs to them.
#[derive(Debug, Default, Clone)]
pub struct Person {
    /// the MPI group (Person id), or the Patient id for an unlinked record
    pub group: String,
    pub patients: Vec<Arc<Fact>>,
    pub encounters: Vec<Arc<Fact>>,
    pub conditions: Vec<Arc<Fact>>,
}

/// An immutable view of the facts at one watermark.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub persons: Vec<Person>,
    pub organizations: Vec<Arc<Fact>>,
    pub watermark: i64,
    pub resources: usize,
}

#[derive(Default)]
struct State {
    loaded: bool,
    watermark: i64,
    facts: HashMap<(&'static str, String), Arc<Fact>>,
    groups: HashMap<String, String>,
    snapshot: Option<Arc<Snapshot>>,
}

/// The facts of one process (shared by all requests).
#[derive(Default)]
pub struct Facts {
    state: tokio::sync::Mutex<State>,
}

fn static_type(t: &str) -> Option<&'static str> {
    TYPES.iter().copied().find(|x| *x == t)
}

/// The projection of one stored resource; `None` when it is not JSON of a kept type.
pub fn project(rtype: &str, body: &[u8]) -> Option<Fact> {
    let rtype = static_type(rtype)?;
    let v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object()?;
    let keep = KEEP.iter().find(|(t, _)| *t == rtype)?.1;
    let mut out = Map::new();
    for k in keep {
        if let Some(x) = obj.get(*k) {
            if *k == "address" {
                let addrs: Vec<Value> = x
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        let mut m = Map::new();
                        for ak in ADDRESS_KEEP {
                            if let Some(y) = a.get(*ak) {
                                m.insert((*ak).to_owned(), y.clone());
                            }
                        }
                        Value::Object(m)
                    })
                    .collect();
                out.insert("address".into(), Value::Array(addrs));
            } else {
                out.insert((*k).to_owned(), x.clone());
            }
        }
    }
    let id = obj.get("id").and_then(Value::as_str)?.to_owned();
    let patient = match rtype {
        "Patient" => Some(id.clone()),
        "Organization" => None,
        _ => obj.get("subject").and_then(|s| s.get("reference")).and_then(Value::as_str).and_then(patient_id),
    };
    Some(Fact { rtype, id, patient, json: Value::Object(out) })
}

/// `Patient/x`, `…/Patient/x`, `Patient/x/_history/n` → `x`.
pub fn patient_id(reference: &str) -> Option<String> {
    let parts: Vec<&str> = reference.split('/').collect();
    let i = parts.iter().rposition(|p| *p == "Patient")?;
    parts.get(i + 1).filter(|s| !s.is_empty()).map(|s| (*s).to_owned())
}

impl Facts {
    /// Refresh from the store and return the current snapshot. `progress`
    /// receives the number of rows read so far during the first load.
    pub async fn snapshot(&self, store: &dyn Store, progress: Option<&(dyn Fn(u64) + Sync)>) -> Result<Arc<Snapshot>, StoreError> {
        let mut st = self.state.lock().await;
        let top = store.count(Sql::new("SELECT COALESCE(MAX(hkey), 0) FROM history")).await?;
        let mut changed = false;
        let mut groups_changed = false;
        if !st.loaded {
            let mut n = 0u64;
            for t in TYPES {
                let mut after = 0i64;
                loop {
                    let mut sql = Sql::new(format!("SELECT {RESOURCE_COLUMNS} FROM resources r WHERE r.rtype = "));
                    sql.text_param(t).push(" AND r.rkey > ").int_param(after).push(" AND r.deleted = 0 ORDER BY r.rkey LIMIT ").int_param(PAGE);
                    let rows = store.query(sql).await?;
                    let Some(last) = rows.last() else { break };
                    after = last.rkey;
                    let len = rows.len() as i64;
                    n += rows.len() as u64;
                    apply(&mut st, rows);
                    if let Some(p) = progress {
                        p(n);
                    }
                    if len < PAGE {
                        break;
                    }
                }
            }
            st.loaded = true;
            changed = true;
            groups_changed = true;
        } else if top > st.watermark || st.snapshot.is_none() {
            let from = (st.watermark - OVERLAP).max(0);
            let mut lo = from;
            while lo < top {
                let hi = (lo + 50_000).min(top);
                let mut sql = Sql::new(format!(
                    "SELECT {RESOURCE_COLUMNS} FROM resources r WHERE r.rkey IN (SELECT h.rkey FROM history h WHERE h.hkey > "
                ));
                sql.int_param(lo).push(" AND h.hkey <= ").int_param(hi).push(
                    " AND h.rtype IN ('Patient', 'Encounter', 'Condition', 'Organization', 'Person'))",
                );
                let rows = store.query(sql).await?;
                if rows.iter().any(|r| r.rtype == "Patient" || r.rtype == "Person") {
                    groups_changed = true;
                }
                changed |= !rows.is_empty();
                apply(&mut st, rows);
                lo = hi;
            }
        }
        if groups_changed {
            let rows = store.rows(Sql::new("SELECT pid, grp FROM mpi_patient")).await?;
            st.groups = rows
                .into_iter()
                .filter_map(|r| match (r.first(), r.get(1)) {
                    (Some(SqlValue::Text(p)), Some(SqlValue::Text(g))) => Some((p.clone(), g.clone())),
                    _ => None,
                })
                .collect();
        }
        st.watermark = st.watermark.max(top);
        if changed || st.snapshot.is_none() {
            st.snapshot = Some(Arc::new(build(&st)));
        }
        Ok(st.snapshot.clone().unwrap_or_default())
    }
}

fn apply(st: &mut State, rows: Vec<ResourceRow>) {
    for r in rows {
        let Some(t) = static_type(&r.rtype) else { continue };
        let key = (t, r.id.clone());
        match (&r.body, r.deleted) {
            (Some(b), false) => match project(t, b) {
                Some(f) => {
                    st.facts.insert(key, Arc::new(f));
                }
                None => {
                    st.facts.remove(&key);
                }
            },
            _ => {
                st.facts.remove(&key);
            }
        }
    }
}

fn build(st: &State) -> Snapshot {
    let mut persons: HashMap<String, Person> = HashMap::new();
    let mut organizations = vec![];
    let group_of = |pid: &str| st.groups.get(pid).cloned().unwrap_or_else(|| pid.to_owned());
    for f in st.facts.values() {
        if f.rtype == "Organization" {
            organizations.push(f.clone());
            continue;
        }
        let Some(pid) = &f.patient else { continue };
        let g = group_of(pid);
        let p = persons.entry(g.clone()).or_insert_with(|| Person { group: g, ..Default::default() });
        match f.rtype {
            "Patient" => p.patients.push(f.clone()),
            "Encounter" => p.encounters.push(f.clone()),
            _ => p.conditions.push(f.clone()),
        }
    }
    let mut persons: Vec<Person> = persons.into_values().filter(|p| !p.patients.is_empty()).collect();
    for p in &mut persons {
        p.patients.sort_by(|a, b| a.id.cmp(&b.id));
        p.encounters.sort_by(|a, b| a.id.cmp(&b.id));
        p.conditions.sort_by(|a, b| a.id.cmp(&b.id));
    }
    persons.sort_by(|a, b| a.group.cmp(&b.group));
    organizations.sort_by(|a, b| a.id.cmp(&b.id));
    Snapshot { persons, organizations, watermark: st.watermark, resources: st.facts.len() }
}
