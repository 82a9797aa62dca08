//! Cross-institution patient views: `Patient/[id]/$everything` (R4
//! `patient-operation-everything.html`) and `Patient/[id]/$summary`, an
//! International Patient Summary document (IPS IG 2.0.0, `hl7.fhir.uv.ips`:
//! Bundle type `document`, Composition LOINC 60591-5 with the IPS sections).
//!
//! Both read the Patient compartment (R4 `compartmentdefinition.html`) of
//! every record of the person — the patient's own record plus the records
//! linked to it ([`patient_group`]) — through the one read path
//! (`crate::read`).
//!
//! `$summary` sections (LOINC codes as in the IPS Composition profile):
//! problems 11450-4 (Condition), allergies 48765-2 (AllergyIntolerance),
//! medications 10160-0 (MedicationStatement, MedicationRequest), immunizations
//! 11369-6 (Immunization), results 30954-2 (Observation not in category
//! vital-signs, DiagnosticReport), vital signs 8716-3 (Observation category
//! vital-signs), procedures 47519-4 (Procedure), plan of care 18776-5
//! (CarePlan). Entered-in-error, refuted and cancelled entries are left
//! out. Every section has a generated narrative; the three sections IPS
//! requires (problems, allergies, medications) carry `emptyReason`
//! `unavailable` (list-empty-reason) when the region knows nothing; other
//! empty sections are omitted. Clinically identical entries from different
//! institutions' records appear once ([`dedup`]); the kept entry gets a
//! Provenance in the document whose `entity` (role `source`) lists every
//! merged source. Resources the entries reference (Medication,
//! Practitioner, Organization, Encounter, …; one level, via the reference
//! search index) are included so the document is self-contained; the
//! Composition's author is the gateway's own Organization. The IPS Bundle
//! profile allows exactly one Patient entry: the document carries the
//! subject's record only, and references in the included resources to the
//! person's other records are pointed at the subject (those resources are
//! re-serialized; all others go in as the stored bytes). `$everything`
//! returns every record unchanged.
//!
//! Both views are built only from what the caller's access filter permits
//! (`auth::filter`): a subject Patient the caller may not see fails with
//! [`SummaryError::Access`] (403); a `$summary` section whose entries were
//! all withheld carries `emptyReason` `withheld` (list-empty-reason, as
//! the IPS Composition's section rules allow) and a narrative saying so,
//! whether the section is required or not; a section with some entries
//! withheld lists only the permitted ones.

pub mod dedup;

use crate::auth::filter::{Access, AccessError, Verdict};
use crate::fhir::datetime;
use crate::read::{self, ReadError};
use crate::services::Services;
use crate::store::{ResourceRow, StoreError};
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap, HashSet};

#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error("Patient/{0} is not known")]
    UnknownPatient(String),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored resource {0} is not valid JSON")]
    Corrupt(String),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Access(#[from] AccessError),
}

/// The elements of a stored resource that sections, labels and
/// de-duplication look at (status, codes, subject, clinical times, value),
/// parsed into a `Value`; the rest (narrative, extensions, components …) is
/// only skipped over, which makes a summary of 500 resources several times
/// cheaper than parsing each whole.
fn slim(body: &[u8]) -> Result<Value, serde_json::Error> {
    const KEEP: &[&str] = &[
        "resourceType", "id", "status", "verificationStatus", "clinicalStatus", "category", "code", "vaccineCode",
        "medicationCodeableConcept", "medicationReference", "subject", "patient", "title", "valueQuantity", "valueString",
        "recordedDate", "issued", "dateAsserted", "authoredOn", "abatementDateTime",
    ];
    const KEEP_PREFIX: &[&str] = &["onset", "effective", "performed", "occurrence"];
    let top: Vec<(&str, &serde_json::value::RawValue)> = match serde_json::from_slice::<TopLevel<'_>>(body) {
        Ok(t) => t.0,
        Err(_) => return serde_json::from_slice(body), // e.g. escaped keys: parse it whole
    };
    let mut m = Map::new();
    for (k, raw) in top {
        if KEEP.contains(&k) || KEEP_PREFIX.iter().any(|p| k.starts_with(p)) {
            m.insert(k.to_owned(), serde_json::from_str(raw.get())?);
        }
    }
    Ok(Value::Object(m))
}

/// A JSON object's members, borrowed and unparsed.
struct TopLevel<'a>(Vec<(&'a str, &'a serde_json::value::RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for TopLevel<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = TopLevel<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<TopLevel<'a>, A::Error> {
                let mut v = Vec::with_capacity(16);
                while let Some((k, raw)) = a.next_entry::<&'de str, &'de serde_json::value::RawValue>()? {
                    v.push((k, raw));
                }
                Ok(TopLevel(v))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// `body` with every `reference` to one of `others` (the person's other
/// records, `Patient/<id>`, relative or absolute) pointed at `subject`;
/// `None` when it has none (the stored bytes are used as they are).
fn retarget(body: &[u8], others: &[String], subject: &str) -> Option<Vec<u8>> {
    if others.is_empty() || !others.iter().any(|o| memchr::memmem::find(body, o.as_bytes()).is_some()) {
        return None;
    }
    // the usual case, relative references only: replace the whole JSON strings
    // `"Patient/<other>"` in the bytes (keys and order untouched)
    let absolute = others.iter().any(|o| {
        let n = memchr::memmem::find_iter(body, o.as_bytes()).count();
        let quoted = memchr::memmem::find_iter(body, format!("\"{o}\"").as_bytes()).count();
        n != quoted
    });
    if !absolute {
        let mut out = body.to_vec();
        for o in others {
            let from = format!("\"{o}\"");
            let to = format!("\"{subject}\"");
            let mut next = Vec::with_capacity(out.len());
            let mut last = 0;
            for i in memchr::memmem::find_iter(&out, from.as_bytes()) {
                next.extend_from_slice(&out[last..i]);
                next.extend_from_slice(to.as_bytes());
                last = i + from.len();
            }
            next.extend_from_slice(&out[last..]);
            out = next;
        }
        return Some(out);
    }
    fn walk(v: &mut Value, others: &[String], subject: &str, changed: &mut bool) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if k == "reference" {
                        if let Value::String(r) = x {
                            if others.iter().any(|o| r == o || (r.ends_with(o.as_str()) && r[..r.len() - o.len()].ends_with('/'))) {
                                *r = subject.to_owned();
                                *changed = true;
                            }
                        }
                    } else {
                        walk(x, others, subject, changed);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, others, subject, changed)),
            _ => {}
        }
    }
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let mut changed = false;
    walk(&mut v, others, subject, &mut changed);
    if changed { serde_json::to_vec(&v).ok() } else { None }
}

/// Id of the gateway's own Organization (the IPS Composition's author).
pub const GATEWAY_ORG: &str = "carebridge-gateway";

/// The records of one person: `id` first, then the Patients reachable over
/// `Patient.link` (seealso, replaces, replaced-by, refer) in either
/// direction (a Patient whose link points here is found through the
/// reference index) and the records the master patient index groups with
/// them, breadth-first, at most 100.
pub async fn patient_group(services: &Services, id: &str) -> Result<Vec<String>, SummaryError> {
    let Some(row) = services.store.read("Patient", id).await? else { return Err(SummaryError::UnknownPatient(id.to_owned())) };
    if row.deleted || row.body.is_none() {
        return Err(SummaryError::UnknownPatient(id.to_owned()));
    }
    let mut out = vec![id.to_owned()];
    let mut seen: HashSet<String> = out.iter().cloned().collect();
    let mut i = 0;
    while i < out.len() && out.len() < 100 {
        let cur = out[i].clone();
        i += 1;
        // the records the master patient index links to it
        for (pid, _) in crate::identity::query::group_members(services, &cur).await? {
            if seen.insert(pid.clone()) {
                out.push(pid);
            }
        }
        // the Patient itself and the Patients that link to it
        let rows = read::patient_compartment(services, std::slice::from_ref(&cur), Some(&["Patient".to_owned()]), None).await?;
        for row in rows {
            if row.id != cur {
                if seen.insert(row.id.clone()) {
                    out.push(row.id.clone());
                }
                continue;
            }
            let Some(body) = &row.body else { continue };
            let v: Value = serde_json::from_slice(body).map_err(|_| SummaryError::Corrupt(format!("Patient/{cur}")))?;
            for l in v.get("link").and_then(Value::as_array).into_iter().flatten() {
                let r = l.pointer("/other/reference").and_then(Value::as_str).unwrap_or("");
                if let Some(other) = r.strip_prefix("Patient/") {
                    if !other.contains('/') && seen.insert(other.to_owned()) {
                        out.push(other.to_owned());
                    }
                }
            }
        }
    }
    Ok(out)
}

/// `$everything` options.
#[derive(Debug, Clone, Default)]
pub struct EverythingOptions {
    pub types: Option<Vec<String>>,
    pub since: Option<i64>,
}

/// The subject Patient must be visible to the caller (403 otherwise).
async fn check_subject(services: &Services, id: &str, access: &mut Access<'_>) -> Result<(), SummaryError> {
    if access.is_unrestricted() {
        return Ok(());
    }
    let row = services.store.read("Patient", id).await?;
    let body = row.and_then(|r| r.body).ok_or_else(|| SummaryError::UnknownPatient(id.to_owned()))?;
    match access.check_bytes("Patient", id, &body).await? {
        Ok(_) => Ok(()),
        Err(d) => Err(AccessError::Denied(format!("Patient/{id}: {}", d.message())).into()),
    }
}

/// Every resource of the person's records (their compartments) and the
/// resources those reference, Patients first; deterministic order; only
/// what `access` permits.
pub async fn everything(services: &Services, id: &str, opts: &EverythingOptions, access: &mut Access<'_>) -> Result<Vec<ResourceRow>, SummaryError> {
    let group = patient_group(services, id).await?;
    check_subject(services, id, access).await?;
    let rows = read::patient_compartment(services, &group, opts.types.as_deref(), opts.since).await?;
    let mut rows = access.filter(rows).await?;
    let mut refs = read::referenced(services, &rows, &[]).await?;
    refs.retain(|r| {
        opts.types.as_ref().is_none_or(|ts| ts.contains(&r.rtype)) && opts.since.is_none_or(|s| r.last_updated >= s)
    });
    rows.extend(access.filter(refs).await?);
    Ok(rows)
}

struct Section {
    code: &'static str,
    title: &'static str,
    display: &'static str,
    required: bool,
    types: &'static [&'static str],
}

const SECTIONS: &[Section] = &[
    Section { code: "11450-4", title: "Problems", display: "Problem list - Reported", required: true, types: &["Condition"] },
    Section { code: "48765-2", title: "Allergies and Intolerances", display: "Allergies and adverse reactions Document", required: true, types: &["AllergyIntolerance"] },
    Section { code: "10160-0", title: "Medication Summary", display: "History of Medication use Narrative", required: true, types: &["MedicationStatement", "MedicationRequest"] },
    Section { code: "11369-6", title: "Immunizations", display: "History of Immunization Narrative", required: false, types: &["Immunization"] },
    Section { code: "30954-2", title: "Results", display: "Relevant diagnostic tests/laboratory data Narrative", required: false, types: &["Observation", "DiagnosticReport"] },
    Section { code: "8716-3", title: "Vital Signs", display: "Vital signs", required: false, types: &["Observation"] },
    Section { code: "47519-4", title: "History of Procedures", display: "History of Procedures Document", required: false, types: &["Procedure"] },
    Section { code: "18776-5", title: "Plan of Care", display: "Plan of care note", required: false, types: &["CarePlan"] },
];

fn is_vital(res: &Value) -> bool {
    res.get("category").and_then(Value::as_array).into_iter().flatten().any(|c| {
        c.get("coding").and_then(Value::as_array).into_iter().flatten().any(|x| x["code"] == "vital-signs")
    })
}

/// Which section an entry belongs to (index into SECTIONS), if any.
fn section_of(rtype: &str, res: &Value) -> Option<usize> {
    let status = |k: &str| res.get(k).and_then(Value::as_str).unwrap_or("");
    let coded = |k: &str| {
        res.get(k).and_then(|c| c.get("coding")).and_then(|c| c.get(0)).and_then(|c| c.get("code")).and_then(Value::as_str).unwrap_or("")
    };
    let excluded = status("status") == "entered-in-error"
        || coded("verificationStatus") == "entered-in-error"
        || coded("verificationStatus") == "refuted"
        || (rtype == "CarePlan" && matches!(status("status"), "revoked" | "completed"))
        || (rtype == "MedicationRequest" && matches!(status("status"), "cancelled" | "draft" | "stopped"))
        || (matches!(rtype, "Observation" | "DiagnosticReport") && status("status") == "cancelled");
    if excluded {
        return None;
    }
    match rtype {
        "Observation" if is_vital(res) => Some(5),
        "Observation" => Some(4),
        _ => SECTIONS.iter().position(|s| s.types.contains(&rtype) && s.code != "8716-3"),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A short human label of an entry for the narrative.
fn label(rtype: &str, res: &Value) -> String {
    let cc = |k: &str| -> Option<String> {
        let c = res.get(k)?;
        c.get("text").and_then(Value::as_str).map(str::to_owned).or_else(|| {
            let first = c.get("coding")?.as_array()?.first()?;
            first.get("display").or_else(|| first.get("code")).and_then(Value::as_str).map(str::to_owned)
        })
    };
    let name = match rtype {
        "Immunization" => cc("vaccineCode"),
        "MedicationStatement" | "MedicationRequest" => cc("medicationCodeableConcept").or_else(|| res.pointer("/medicationReference/display").and_then(Value::as_str).map(str::to_owned)),
        "CarePlan" => res.get("title").and_then(Value::as_str).map(str::to_owned).or_else(|| cc("category")),
        _ => cc("code"),
    }
    .unwrap_or_else(|| rtype.to_owned());
    let value = res
        .get("valueQuantity")
        .map(|q| format!(" {} {}", q.get("value").map(Value::to_string).unwrap_or_default(), q.get("unit").and_then(Value::as_str).unwrap_or("")))
        .or_else(|| res.get("valueString").and_then(Value::as_str).map(|s| format!(" {s}")))
        .unwrap_or_default();
    let when = ["onsetDateTime", "effectiveDateTime", "performedDateTime", "occurrenceDateTime", "authoredOn", "recordedDate"]
        .iter()
        .find_map(|k| res.get(*k).and_then(Value::as_str))
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    format!("{name}{}{when}", value.trim_end())
}

fn narrative(items: &[String]) -> Value {
    let div = if items.is_empty() {
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>No information available in the regional record.</p></div>".to_owned()
    } else {
        let lis: String = items.iter().map(|s| format!("<li>{}</li>", esc(s))).collect();
        format!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><ul>{lis}</ul></div>")
    };
    json!({"status": "generated", "div": div})
}

/// The narrative of a section whose entries the access policy withheld
/// (IPS: `emptyReason` `withheld`, list-empty-reason).
fn withheld_narrative() -> Value {
    json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Information withheld: the patient's consent or the access policy does not permit showing it to you.</p></div>"})
}

/// Build the IPS document for Patient `id` (absolute `base` for fullUrls,
/// `now_us` for timestamps) as JSON bytes; stored resources are embedded
/// as stored.
pub async fn ips(services: &Services, id: &str, base: &str, now_us: i64, access: &mut Access<'_>) -> Result<Vec<u8>, SummaryError> {
    let group = patient_group(services, id).await?;
    check_subject(services, id, access).await?;
    let types: Vec<String> = SECTIONS.iter().flat_map(|s| s.types.iter().map(|t| (*t).to_owned())).collect::<BTreeSet<_>>().into_iter().collect();
    let rows = read::patient_compartment(services, &group, Some(&types), None).await?;
    let mut parsed: Vec<(ResourceRow, Value)> = Vec::with_capacity(rows.len());
    // entries the access filter withheld, per section
    let mut withheld = vec![0usize; SECTIONS.len()];
    for mut r in rows {
        let Some(b) = &r.body else { continue };
        let v = slim(b).map_err(|_| SummaryError::Corrupt(format!("{}/{}", r.rtype, r.id)))?;
        if !access.is_unrestricted() {
            // the access decision needs the whole resource (meta, references, dates)
            let full: Value = serde_json::from_slice(b).map_err(|_| SummaryError::Corrupt(format!("{}/{}", r.rtype, r.id)))?;
            match access.decide(&r.rtype, &r.id, &full).await? {
                Verdict::Permit => {}
                Verdict::BreakGlass => {
                    let body = r.body.clone().unwrap_or_default();
                    if let Ok(b) = access.check_bytes(&r.rtype, &r.id, &body).await? {
                        r.body = Some(b);
                    }
                }
                Verdict::Deny(_) => {
                    if let Some(s) = section_of(&r.rtype, &v) {
                        withheld[s] += 1;
                    }
                    continue;
                }
            }
        }
        parsed.push((r, v));
    }
    // which record (Patient) an entry belongs to
    let record_of = |v: &Value| -> String {
        for k in ["subject", "patient"] {
            if let Some(r) = v.get(k).and_then(|x| x.get("reference")).and_then(Value::as_str) {
                return r.trim_start_matches("Patient/").to_owned();
            }
        }
        String::new()
    };
    // the patient's own record first, so its entries are the ones kept
    let rank: HashMap<&str, usize> = group.iter().enumerate().map(|(i, g)| (g.as_str(), i)).collect();
    parsed.sort_by_cached_key(|(r, v)| (rank.get(record_of(v).as_str()).copied().unwrap_or(usize::MAX), r.rtype.clone(), r.rkey));

    let mut per_section: Vec<Vec<usize>> = vec![vec![]; SECTIONS.len()];
    for (i, (r, v)) in parsed.iter().enumerate() {
        if let Some(s) = section_of(&r.rtype, v) {
            per_section[s].push(i);
        }
    }
    let now = datetime::format_instant(now_us);
    let gateway_ref = format!("Organization/{GATEWAY_ORG}");
    let mut sections = vec![];
    let mut kept_rows: Vec<usize> = vec![];
    let mut provenances = vec![];
    for (si, sec) in SECTIONS.iter().enumerate() {
        let idx = &per_section[si];
        let items: Vec<dedup::Item> = idx
            .iter()
            .map(|&i| {
                let (r, v) = &parsed[i];
                dedup::Item { rtype: r.rtype.clone(), id: r.id.clone(), record: record_of(v), codes: dedup::codes(&r.rtype, v), interval: dedup::interval(&r.rtype, v) }
            })
            .collect();
        let groups = dedup::groups(&items);
        let mut entries = vec![];
        let mut labels = vec![];
        for (keep, dups) in groups {
            let i = idx[keep];
            let (r, v) = &parsed[i];
            entries.push(json!({"reference": format!("{}/{}", r.rtype, r.id)}));
            labels.push(label(&r.rtype, v));
            kept_rows.push(i);
            if !dups.is_empty() {
                let entity: Vec<Value> = std::iter::once(keep)
                    .chain(dups.iter().copied())
                    .map(|k| json!({"role": "source", "what": {"reference": format!("{}/{}", items[k].rtype, items[k].id)}}))
                    .collect();
                let pid = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, format!("carebridge:summary-provenance:{}/{}", r.rtype, r.id).as_bytes());
                provenances.push(json!({
                    "resourceType": "Provenance",
                    "id": pid.to_string(),
                    "target": [{"reference": format!("{}/{}", r.rtype, r.id)}],
                    "recorded": now,
                    "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "UPDATE", "display": "revise"}], "text": "merged clinically identical entries from several institutions"},
                    "agent": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "assembler"}]}, "who": {"reference": gateway_ref}}],
                    "entity": entity,
                }));
            }
        }
        let all_withheld = entries.is_empty() && withheld[si] > 0;
        if entries.is_empty() && !sec.required && !all_withheld {
            continue;
        }
        let mut s = Map::new();
        s.insert("title".into(), json!(sec.title));
        s.insert("code".into(), json!({"coding": [{"system": "http://loinc.org", "code": sec.code, "display": sec.display}]}));
        s.insert("text".into(), if all_withheld { withheld_narrative() } else { narrative(&labels) });
        if all_withheld {
            s.insert("emptyReason".into(), json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/list-empty-reason", "code": "withheld", "display": "Information Withheld"}]}));
        } else if entries.is_empty() {
            s.insert("emptyReason".into(), json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/list-empty-reason", "code": "unavailable", "display": "Unavailable"}]}));
        } else {
            s.insert("entry".into(), Value::Array(entries));
        }
        sections.push(Value::Object(s));
    }

    // the document's resources: Patient(s), the kept entries, what they reference
    let mut doc_rows: Vec<ResourceRow> = kept_rows.iter().map(|&i| parsed[i].0.clone()).collect();
    let mut patients = vec![];
    for chunk in group.chunks(200) {
        patients.extend(services.store.query(crate::search::plan::resources_by_ids_sql("Patient", chunk)).await.map_err(ReadError::from)?);
    }
    let patients = access.filter(patients).await?;
    let mut with_patients = patients.clone();
    with_patients.extend(doc_rows.iter().cloned());
    let refs = read::referenced(services, &with_patients, &[]).await?;
    doc_rows.extend(access.filter(refs).await?);

    let comp_id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, format!("carebridge:summary:{id}:{now_us}").as_bytes()).to_string();
    let composition = json!({
        "resourceType": "Composition",
        "id": comp_id,
        "status": "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": "60591-5", "display": "Patient summary Document"}]},
        "subject": {"reference": format!("Patient/{id}")},
        "date": now,
        "author": [{"reference": gateway_ref}],
        "title": "International Patient Summary",
        "section": sections,
    });
    let gateway = json!({"resourceType": "Organization", "id": GATEWAY_ORG, "name": "carebridge regional gateway"});
    // the Bundle is written as bytes: stored resources go in exactly as stored
    let js = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut out: Vec<u8> = Vec::with_capacity(4096 + doc_rows.iter().map(|r| r.body.as_ref().map_or(0, |b| b.len() + 128)).sum::<usize>());
    out.extend_from_slice(b"{\"resourceType\":\"Bundle\",\"id\":");
    out.extend_from_slice(js(&uuid::Uuid::new_v4().to_string()).as_bytes());
    out.extend_from_slice(b",\"identifier\":{\"system\":\"urn:ietf:rfc:3986\",\"value\":");
    out.extend_from_slice(js(&format!("urn:uuid:{comp_id}")).as_bytes());
    out.extend_from_slice(b"},\"type\":\"document\",\"timestamp\":");
    out.extend_from_slice(js(&now).as_bytes());
    out.extend_from_slice(b",\"entry\":[");
    let push = |out: &mut Vec<u8>, rtype: &str, rid: &str, body: &[u8]| {
        if out.last() != Some(&b'[') {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"fullUrl\":");
        out.extend_from_slice(js(&format!("{base}/{rtype}/{rid}")).as_bytes());
        out.extend_from_slice(b",\"resource\":");
        out.extend_from_slice(body);
        out.push(b'}');
    };
    push(&mut out, "Composition", &comp_id, &serde_json::to_vec(&composition).unwrap_or_default());
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    // the subject first (IPS: exactly one Patient entry), then the entries and what they
    // reference, with references to the person's other records pointed at the subject
    let others: Vec<String> = group.iter().filter(|g| *g != id).map(|g| format!("Patient/{g}")).collect();
    for r in patients.iter().filter(|r| r.id == id).chain(doc_rows.iter().filter(|r| r.rtype != "Patient")) {
        if !seen.insert((r.rtype.as_str(), r.id.as_str())) {
            continue;
        }
        if let Some(b) = &r.body {
            match retarget(b, &others, &format!("Patient/{id}")) {
                Some(rewritten) => push(&mut out, &r.rtype, &r.id, &rewritten),
                None => push(&mut out, &r.rtype, &r.id, b),
            }
        }
    }
    if !seen.contains(&("Organization", GATEWAY_ORG)) {
        push(&mut out, "Organization", GATEWAY_ORG, &serde_json::to_vec(&gateway).unwrap_or_default());
    }
    for p in provenances {
        let pid = p["id"].as_str().unwrap_or_default().to_owned();
        push(&mut out, "Provenance", &pid, &serde_json::to_vec(&p).unwrap_or_default());
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retarget_relative_and_absolute_references() {
        let others = vec!["Patient/b".to_owned()];
        let body = br#"{"resourceType":"Condition","subject":{"reference":"Patient/b"},"note":[{"text":"Patient/bb"}],"x":1.50}"#;
        let out = retarget(body, &others, "Patient/a").unwrap();
        assert_eq!(out, br#"{"resourceType":"Condition","subject":{"reference":"Patient/a"},"note":[{"text":"Patient/bb"}],"x":1.50}"#.to_vec());
        let abs = br#"{"resourceType":"Condition","subject":{"reference":"http://x/fhir/Patient/b"},"note":[{"text":"see Patient/b"}]}"#;
        let out: Value = serde_json::from_slice(&retarget(abs, &others, "Patient/a").unwrap()).unwrap();
        assert_eq!(out["subject"]["reference"], "Patient/a");
        assert_eq!(out["note"][0]["text"], "see Patient/b", "only references change");
        assert!(retarget(br#"{"subject":{"reference":"Patient/c"}}"#, &others, "Patient/a").is_none());
    }

    #[test]
    fn slim_keeps_what_sections_use() {
        let body = br#"{"resourceType":"Observation","id":"o","text":{"div":"<div/>"},"status":"final","category":[{"coding":[{"code":"vital-signs"}]}],"code":{"text":"Weight"},"subject":{"reference":"Patient/a"},"effectiveDateTime":"2024-03-05","valueQuantity":{"value":82.50,"unit":"kg"},"component":[]}"#;
        let v = slim(body).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["resourceType", "id", "status", "category", "code", "subject", "effectiveDateTime", "valueQuantity"]);
        assert_eq!(section_of("Observation", &v), Some(5));
        assert_eq!(label("Observation", &v), "Weight 82.50 kg (2024-03-05)");
        assert!(slim(b"{\"a\":").is_err());
    }
}
