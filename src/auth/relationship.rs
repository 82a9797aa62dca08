//! Care relationships: whether a clinical member treats a patient (issue 7
//! "Care relationship"), read from FHIR resources of the patient's records:
//!
//! | kind | resource (R4) | the member is … | active when |
//! |------|---------------|-----------------|-------------|
//! | encounter | `Encounter` (`encounter.html`) | `serviceProvider` | status planned, arrived, triaged, in-progress, onleave |
//! | episode | `EpisodeOfCare` (`episodeofcare.html`) | `managingOrganization` | status planned, waitlist, active, onhold |
//! | care team | `CareTeam` (`careteam.html`) | `participant.member` or `participant.onBehalfOf` (the Organization, or one of its Practitioners/PractitionerRoles by `PractitionerRole.organization`), or `managingOrganization` | status active (or absent) and `period` covers now |
//! | referral | `ServiceRequest` (`servicerequest.html`) | `performer` | status active, on-hold |
//! | referral task | `Task` (`task.html`, workflow `task.html#statemachine`) | `owner` | status requested, received, accepted, ready, in-progress, on-hold |
//! | treatment | `Consent` with scope `treatment` (`consent.html`, `consentscope`) | `provision.actor.reference` | status active, provision type permit (or absent), `provision.period` covers now |
//!
//! The explicit treatment relationship is a FHIR `Consent` of scope
//! `treatment` (the patient's consent to be treated by that member), so it
//! travels with the record like every other relationship and needs no
//! gateway-private table.
//!
//! A patient's records are the person's: the records the master patient
//! index groups with it (`mpi_patient.grp`, the table `identity` keeps) and
//! the Patients one `Patient.link` away from any of those, in either
//! direction. A relationship with any of them counts, and the Consents of
//! any of them apply.
//!
//! Every lookup goes through the search index (`idx_reference`): per
//! person, one query finds the records and one every candidate resource
//! (the relationship kinds above plus all of the person's Consents); only
//! when a CareTeam names practitioners does a third read the member's
//! PractitionerRoles. (Two plain queries measured faster on SQLite than one
//! that feeds the records' CTE into the candidate probes.)
//!
//! Invariant: only resources whose own reference names the member (or one of
//! its practitioners) establish a relationship; nothing is inferred from
//! who sent a record.

use super::consent::{self, PrivacyConsent};
use crate::fhir::{datetime, reference};
use crate::services::Services;
use crate::store::{Sql, StoreError, RESOURCE_COLUMNS};
use serde_json::Value;
use std::collections::HashSet;

/// Which resource made the relationship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relationship {
    /// `encounter`, `episode-of-care`, `care-team`, `referral`, `task`, `treatment`
    pub kind: &'static str,
    /// `Type/id` of the resource
    pub via: String,
}

/// Types whose resources can make a relationship or carry privacy Consent.
pub(super) const FACT_TYPES: &[&str] = &["Encounter", "EpisodeOfCare", "CareTeam", "ServiceRequest", "Task", "Consent"];

/// What a request needs to know about one person for one member.
#[derive(Debug, Clone, Default)]
pub struct PersonFacts {
    /// the person's Patient ids (the asked-for id first)
    pub records: Vec<String>,
    pub relationship: Option<Relationship>,
    /// active `patient-privacy` Consents of any of the person's records
    pub consents: Vec<PrivacyConsent>,
}

/// `WITH … person(id)`: the person's records — `pid`, its master patient
/// index group (`mpi_patient.grp`) and the Patients one `Patient.link` away
/// from any of them, in either direction.
fn person_cte(pid: &str) -> Sql {
    let mut sql = Sql::new("WITH g(id) AS (SELECT CAST(");
    sql.text_param(pid).push(" AS TEXT) UNION SELECT q.pid FROM mpi_patient p JOIN mpi_patient q ON q.grp = p.grp WHERE p.pid = ").text_param(pid);
    sql.push(
        "), person(id) AS (SELECT id FROM g \
         UNION SELECT l.target_id FROM idx_reference l JOIN resources r ON r.rkey = l.rkey \
         WHERE r.rtype = 'Patient' AND l.rtype = 'Patient' AND l.param = 'link' AND l.target_type = 'Patient' AND r.id IN (SELECT id FROM g) \
         UNION SELECT r.id FROM idx_reference l JOIN resources r ON r.rkey = l.rkey \
         WHERE l.rtype = 'Patient' AND l.param = 'link' AND l.target_type = 'Patient' AND r.deleted = 0 AND l.target_id IN (SELECT id FROM g)) ",
    );
    sql
}

fn in_list(sql: &mut Sql, ids: &[String]) {
    sql.push("(");
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.text_param(id.clone());
    }
    sql.push(")");
}

/// The person's records (see [`person_cte`]), `pid` first.
pub async fn person_records(services: &Services, pid: &str) -> Result<Vec<String>, StoreError> {
    let mut sql = person_cte(pid);
    sql.push("SELECT id FROM person");
    let mut out = vec![pid.to_owned()];
    for row in services.store.rows(sql).await? {
        if let Some(id) = row.first().and_then(|v| v.as_str()) {
            if !out.iter().any(|x| x == id) {
                out.push(id.to_owned());
            }
        }
    }
    out.truncate(100);
    Ok(out)
}

/// The candidate resources of the person's records: Encounters,
/// EpisodesOfCare, ServiceRequests and Tasks that reference the member
/// Organization, and all CareTeams and Consents.
fn facts_sql(services: &Services, records: &[String], member: Option<&str>) -> Sql {
    // one index range: (rtype, param, target_id) lead idx_reference_q; the
    // few extra (type, parameter) pairs the IN lists allow only add
    // candidates that the checks below look at anyway
    let extra = super::filter::OUTSIDE_COMPARTMENT.iter().map(|(t, p)| ((*t).to_owned(), vec![(*p).to_owned()]));
    let members: Vec<(String, Vec<String>)> = services.registry.patient_compartment.iter().cloned().chain(extra).collect();
    let mut types: Vec<String> = vec![];
    let mut params: Vec<String> = vec![];
    for (t, ps) in members.iter().filter(|(t, _)| FACT_TYPES.contains(&t.as_str())) {
        if !types.contains(t) {
            types.push(t.clone());
        }
        for p in ps {
            if !params.contains(p) {
                params.push(p.clone());
            }
        }
    }
    let mut sql = Sql::new("SELECT r.rtype, r.id, r.body FROM resources r WHERE r.deleted = 0 AND r.rkey IN (SELECT rkey FROM idx_reference WHERE rtype IN ");
    in_list(&mut sql, &types);
    sql.push(" AND param IN ");
    in_list(&mut sql, &params);
    sql.push(" AND target_type = 'Patient' AND target_id IN ");
    in_list(&mut sql, records);
    sql.push(") AND (r.rtype IN ('CareTeam', 'Consent')");
    if let Some(m) = member {
        // COALESCE keeps this test on the (rkey, param) index instead of
        // scanning every reference to the member
        sql.push(" OR EXISTS (SELECT 1 FROM idx_reference o WHERE o.rkey = r.rkey AND COALESCE(o.target_type, '') = 'Organization' AND COALESCE(o.target_id, '') = ")
            .text_param(m)
            .push(")");
    }
    sql.push(")");
    sql
}

pub(super) fn status(v: &Value) -> &str {
    v.get("status").and_then(Value::as_str).unwrap_or("")
}

pub(super) fn refs_at<'a>(v: &'a Value, ptrs: &[&str]) -> Vec<&'a str> {
    let mut out = vec![];
    for p in ptrs {
        // `/a/*/b`: every element of array a
        let mut cur: Vec<&Value> = vec![v];
        for seg in p.trim_start_matches('/').split('/') {
            let mut next = vec![];
            for c in cur {
                if seg == "*" {
                    if let Some(a) = c.as_array() {
                        next.extend(a.iter());
                    }
                } else if let Some(x) = c.get(seg) {
                    next.push(x);
                }
            }
            cur = next;
        }
        out.extend(cur.into_iter().filter_map(Value::as_str));
    }
    out
}

fn is_org(r: &str, member: &str) -> bool {
    matches!(reference::parse(r), (Some(t), Some(i)) if t == "Organization" && i == member)
}

pub(super) fn period_covers(v: Option<&Value>, now: i64) -> bool {
    let Some(p) = v else { return true };
    let lo = p.get("start").and_then(Value::as_str).and_then(datetime::parse).map(|d| d.lo).unwrap_or(i64::MIN);
    let hi = p.get("end").and_then(Value::as_str).and_then(datetime::parse).map(|d| d.hi).unwrap_or(i64::MAX);
    lo <= now && now <= hi
}

/// The relationship a resource makes with `member`, if any (CareTeam
/// practitioners are checked separately); `encounter`, `episode-of-care`,
/// `referral`, `task`, `care-team` or `treatment`.
pub fn direct(rtype: &str, v: &Value, member: &str, now: i64) -> Option<&'static str> {
    let any = |ptrs: &[&str]| refs_at(v, ptrs).into_iter().any(|r| is_org(r, member));
    match rtype {
        "Encounter" if matches!(status(v), "planned" | "arrived" | "triaged" | "in-progress" | "onleave") && any(&["/serviceProvider/reference"]) => {
            Some("encounter")
        }
        "EpisodeOfCare" if matches!(status(v), "planned" | "waitlist" | "active" | "onhold") && any(&["/managingOrganization/reference"]) => {
            Some("episode-of-care")
        }
        "ServiceRequest" if matches!(status(v), "active" | "on-hold") && any(&["/performer/*/reference"]) => Some("referral"),
        "Task"
            if matches!(status(v), "requested" | "received" | "accepted" | "ready" | "in-progress" | "on-hold")
                && any(&["/owner/reference"]) =>
        {
            Some("task")
        }
        "CareTeam"
            if matches!(status(v), "active" | "")
                && period_covers(v.get("period"), now)
                && any(&["/participant/*/member/reference", "/participant/*/onBehalfOf/reference", "/managingOrganization/*/reference"]) =>
        {
            Some("care-team")
        }
        "Consent" if consent::is_active(v) && consent::scope_codes(v).iter().any(|c| c == "treatment") => {
            let p = v.get("provision")?;
            let permit = matches!(p.get("type").and_then(Value::as_str), None | Some("permit"));
            (permit && period_covers(p.get("period"), now) && any(&["/provision/actor/*/reference/reference"])).then_some("treatment")
        }
        _ => None,
    }
}

/// `Practitioner/…` and `PractitionerRole/…` references of the member's active PractitionerRoles.
pub(super) async fn member_practitioners(services: &Services, member: &str) -> Result<HashSet<String>, StoreError> {
    let mut sql = Sql::new(format!(
        "SELECT {RESOURCE_COLUMNS} FROM resources r WHERE r.deleted = 0 AND r.rtype = 'PractitionerRole' AND r.rkey IN \
         (SELECT rkey FROM idx_reference WHERE rtype = 'PractitionerRole' AND param = 'organization' AND target_type = 'Organization' AND target_id = "
    ));
    sql.text_param(member).push(")");
    let mut out = HashSet::new();
    for row in services.store.query(sql).await? {
        let Some(v) = row.body.as_deref().and_then(|b| serde_json::from_slice::<Value>(b).ok()) else { continue };
        if v.get("active") == Some(&Value::Bool(false)) {
            continue;
        }
        out.insert(format!("PractitionerRole/{}", row.id));
        if let Some(p) = v.pointer("/practitioner/reference").and_then(Value::as_str) {
            if let (Some(t), Some(i)) = reference::parse(p) {
                out.insert(format!("{t}/{i}"));
            }
        }
    }
    Ok(out)
}

struct Candidate {
    rtype: String,
    id: String,
}

/// Relationship and privacy Consents of the person of Patient `pid` for
/// `member` (an Organization id; `None`: Consents only).
pub async fn person_facts(services: &Services, pid: &str, member: Option<&str>, now: i64) -> Result<PersonFacts, StoreError> {
    let records = person_records(services, pid).await?;
    // generic rows: a short keyed lookup the store may run inline
    let rows = services.store.rows(facts_sql(services, &records, member)).await?;
    let mut facts = PersonFacts { records, ..Default::default() };
    let mut care_teams: Vec<(String, Value)> = vec![];
    for cols in rows {
        let (Some(rtype), Some(id), Some(body)) = (cols.first().and_then(|c| c.as_str()), cols.get(1).and_then(|c| c.as_str()), cols.get(2).and_then(|c| c.as_str())) else {
            continue;
        };
        let row = Candidate { rtype: rtype.to_owned(), id: id.to_owned() };
        let Ok(v) = serde_json::from_str::<Value>(body) else { continue };
        if row.rtype == "Consent" {
            if let Some(c) = PrivacyConsent::parse(&v) {
                facts.consents.push(c);
            }
        }
        let Some(m) = member else { continue };
        if facts.relationship.is_some() {
            continue;
        }
        if let Some(kind) = direct(&row.rtype, &v, m, now) {
            facts.relationship = Some(Relationship { kind, via: format!("{}/{}", row.rtype, row.id) });
        } else if row.rtype == "CareTeam" && matches!(status(&v), "active" | "") && period_covers(v.get("period"), now) {
            care_teams.push((row.id.clone(), v));
        }
    }
    if let (None, Some(m), false) = (&facts.relationship, member, care_teams.is_empty()) {
        let staff = member_practitioners(services, m).await?;
        if !staff.is_empty() {
            for (id, v) in &care_teams {
                let hit = refs_at(v, &["/participant/*/member/reference", "/participant/*/onBehalfOf/reference"]).into_iter().any(|r| {
                    matches!(reference::parse(r), (Some(t), Some(i)) if staff.contains(&format!("{t}/{i}")))
                });
                if hit {
                    facts.relationship = Some(Relationship { kind: "care-team", via: format!("CareTeam/{id}") });
                    break;
                }
            }
        }
    }
    Ok(facts)
}

/// `(type, id)` of the resources of the person's `records` that a
/// Provenance attributes to `member` (`Provenance.agent.who` = the member
/// Organization, `Provenance.target` = the resource): what the member
/// itself sent through HL7 v2 or CSV/JSON import.
pub async fn provenance_owned(services: &Services, records: &[String], member: &str) -> Result<HashSet<(String, String)>, StoreError> {
    let mut sql = Sql::new(
        "SELECT t.target_type, t.target_id FROM idx_reference p JOIN idx_reference t ON t.rkey = p.rkey AND t.param = 'target' \
         WHERE p.rtype = 'Provenance' AND p.param = 'patient' AND p.target_type = 'Patient' AND p.target_id IN ",
    );
    in_list(&mut sql, records);
    sql.push(
        " AND t.target_type IS NOT NULL AND t.target_id IS NOT NULL \
         AND EXISTS (SELECT 1 FROM idx_reference a WHERE a.rkey = p.rkey AND a.param = 'agent' AND COALESCE(a.target_type, '') = 'Organization' AND COALESCE(a.target_id, '') = ",
    );
    sql.text_param(member).push(")");
    Ok(services.store.pairs(sql).await?.into_iter().collect())
}
