//! Access decisions for bulk readers — Bulk Data `$export` jobs and measure
//! evaluation — with the same rules as the per-request filter
//! (`filter.rs`), but with the facts loaded once per job instead of once per
//! person: an export streams hundreds of thousands of rows and must not
//! query the store per row or per patient.
//!
//! [`BulkAccess::prepare`] reads, in a handful of queries:
//!
//! * the person graph — every `mpi_patient` (record → MPI group) and every
//!   `Patient.link` edge — so a record's person (its MPI group and the
//!   Patients one link away in either direction, exactly as
//!   `relationship::person_records` reads them) is found in memory;
//! * for a clinical member: the records a care relationship names (the
//!   Encounters, EpisodesOfCare, ServiceRequests, Tasks, treatment Consents
//!   that reference the member Organization, and the CareTeams naming it or
//!   its practitioners — decided by `relationship::direct`), and the
//!   resources a Provenance attributes to the member (its own records);
//! * every active `patient-privacy` Consent, by record.
//!
//! Then [`BulkAccess::decide`] is a pure, synchronous function of a row
//! (safe to call from the evaluation threads).
//!
//! What applies depends on what leaves ([`Release`]):
//!
//! * **Identified** (a clinical member's export, a subject-list report): the
//!   per-request rule — care relationship (unless `[access]
//!   care_relationship = false`) and the person's Consent (else the
//!   region's default policy), or the member's own record. Break-glass does
//!   not apply: it releases one emergency patient, never a bulk read.
//!   Operators and integration engines are not filtered; other callers get
//!   nothing patient-level.
//! * **Secondary** (the insurer's de-identified export, aggregate measure
//!   counts): no care relationship is needed and neither a Consent's base
//!   rule nor the default policy applies (they govern identified sharing
//!   between care providers); a person's rows are left out when one of
//!   their Consents *explicitly* denies this use — a deny provision that
//!   matches the reader (its member Organization as actor) and one of the
//!   purposes of use `[access] secondary_use_purposes` (default `HRESCH`
//!   research, `HPAYMT` payment) or the purpose the caller asserted, and that
//!   names the purpose or the actor itself (or is nested in a provision
//!   that does; `consent::Decision::explicit`).
//!
//! Invariant: for [`Release::Identified`] a row is permitted exactly when
//! `filter::Access::decide` would permit it without break-glass; the facts
//! are those committed when the job started.

use super::consent::{self, AccessFacts, PrivacyConsent, ResourceFacts, Rule};
use super::filter::{compartment_patients, source_names_member};
use super::relationship;
use super::{Caller, MemberType};
use crate::fhir::{datetime, reference};
use crate::search::Registry;
use crate::services::access::DefaultPolicy;
use crate::services::Services;
use crate::store::{Sql, StoreError, RESOURCE_COLUMNS};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What leaves the gateway with the rows a bulk reader decides about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// identified resources (export files, subject lists)
    Identified,
    /// de-identified resources or aggregate counts
    Secondary,
}

/// The MPI groups and `Patient.link` edges of every record.
#[derive(Default)]
struct Persons {
    grp_of: HashMap<String, String>,
    groups: HashMap<String, Vec<String>>,
    /// `Patient.link` targets by source record (any source)
    out: HashMap<String, Vec<String>>,
    /// live sources by `Patient.link` target
    inc: HashMap<String, Vec<String>>,
}

impl Persons {
    async fn load(services: &Services) -> Result<Persons, StoreError> {
        let mut p = Persons::default();
        for (pid, grp) in services.store.pairs(Sql::new("SELECT pid, grp FROM mpi_patient")).await? {
            p.groups.entry(grp.clone()).or_default().push(pid.clone());
            p.grp_of.insert(pid, grp);
        }
        let links = "SELECT r.id, l.target_id FROM idx_reference l JOIN resources r ON r.rkey = l.rkey \
                     WHERE l.rtype = 'Patient' AND l.param = 'link' AND l.target_type = 'Patient' AND r.rtype = 'Patient' AND l.target_id IS NOT NULL";
        for (src, dst) in services.store.pairs(Sql::new(links)).await? {
            p.out.entry(src).or_default().push(dst);
        }
        for (src, dst) in services.store.pairs(Sql::new(format!("{links} AND r.deleted = 0"))).await? {
            p.inc.entry(dst).or_default().push(src);
        }
        Ok(p)
    }

    /// The person's records (`pid` first), as `relationship::person_records`.
    fn records<'a>(&'a self, pid: &'a str) -> Vec<&'a str> {
        let mut g: Vec<&str> = vec![pid];
        if let Some(grp) = self.grp_of.get(pid) {
            for q in self.groups.get(grp).into_iter().flatten() {
                if !g.contains(&q.as_str()) {
                    g.push(q);
                }
            }
        }
        let mut out = g.clone();
        for x in &g {
            for y in self.out.get(*x).into_iter().flatten().chain(self.inc.get(*x).into_iter().flatten()) {
                if !out.contains(&y.as_str()) {
                    out.push(y);
                }
            }
        }
        out.truncate(100);
        out
    }
}

/// Active privacy Consents by the record they belong to.
async fn privacy_consents(services: &Services) -> Result<HashMap<String, Vec<Arc<PrivacyConsent>>>, StoreError> {
    let sql = Sql::new(format!("SELECT {RESOURCE_COLUMNS} FROM resources r WHERE r.rtype = 'Consent' AND r.deleted = 0"));
    let mut out: HashMap<String, Vec<Arc<PrivacyConsent>>> = HashMap::new();
    for row in services.store.query(sql).await? {
        let Some(v) = row.body.as_deref().and_then(|b| serde_json::from_slice::<Value>(b).ok()) else { continue };
        let Some(c) = PrivacyConsent::parse(&v) else { continue };
        let c = Arc::new(c);
        for pid in compartment_patients(&services.registry, "Consent", &row.id, &v) {
            out.entry(pid).or_default().push(c.clone());
        }
    }
    Ok(out)
}

struct MemberView {
    member: String,
    member_ref: String,
    purpose: String,
    care_relationship: bool,
    default_policy: DefaultPolicy,
    persons: Persons,
    /// records a relationship-making resource names
    related: HashSet<String>,
    consents: HashMap<String, Vec<Arc<PrivacyConsent>>>,
    /// `Type/id` a Provenance attributes to the member → that Provenance's patients
    owned: HashMap<String, Vec<String>>,
}

struct SecondaryView {
    reader: Option<String>,
    purposes: Vec<String>,
    persons: Persons,
    consents: HashMap<String, Vec<Arc<PrivacyConsent>>>,
}

enum Mode {
    Unrestricted,
    NoPatientData,
    Member(Box<MemberView>),
    Secondary(Box<SecondaryView>),
}

/// One bulk job's access decisions (see the module doc).
pub struct BulkAccess {
    registry: Arc<Registry>,
    mode: Mode,
    now: i64,
}

impl BulkAccess {
    /// Load what the decisions for `caller` need (a few bulk queries).
    pub async fn prepare(services: &Services, caller: &Caller, release: Release) -> Result<BulkAccess, StoreError> {
        let now = datetime::now_micros();
        let cfg = services.access.clone();
        let mode = match release {
            Release::Identified => match caller.member_type {
                MemberType::Operator | MemberType::IntegrationEngine => Mode::Unrestricted,
                t if t.is_clinical() && caller.member.is_some() => {
                    let member = caller.member.clone().unwrap_or_default();
                    Mode::Member(Box::new(MemberView {
                        member_ref: format!("Organization/{member}"),
                        purpose: caller.purpose_of_use.clone().unwrap_or_else(|| "TREAT".to_owned()),
                        care_relationship: cfg.care_relationship,
                        default_policy: cfg.default_policy,
                        persons: Persons::load(services).await?,
                        related: related_records(services, &member, now).await?,
                        consents: privacy_consents(services).await?,
                        owned: provenance_owned(services, &member).await?,
                        member,
                    }))
                }
                _ => Mode::NoPatientData,
            },
            Release::Secondary => {
                let consents = privacy_consents(services).await?;
                let mut purposes = cfg.secondary_use_purposes.clone();
                if let Some(p) = &caller.purpose_of_use {
                    if !purposes.contains(p) {
                        purposes.push(p.clone());
                    }
                }
                if consents.is_empty() {
                    Mode::Unrestricted
                } else {
                    Mode::Secondary(Box::new(SecondaryView { reader: caller.member_reference(), purposes, persons: Persons::load(services).await?, consents }))
                }
            }
        };
        Ok(BulkAccess { registry: services.registry.clone(), mode, now })
    }

    /// Nothing is withheld (decisions need not parse the rows).
    pub fn is_unrestricted(&self) -> bool {
        matches!(self.mode, Mode::Unrestricted)
    }

    /// May this row leave? `patients`: its Patient compartment when the
    /// reader knows it already (report facts), else taken from `res`.
    pub fn decide(&self, rtype: &str, id: &str, res: &Value, patients: Option<&[&str]>) -> bool {
        if self.is_unrestricted() {
            return true;
        }
        let owned_patients;
        let patients: Vec<&str> = match patients {
            Some(p) => p.to_vec(),
            None => {
                owned_patients = compartment_patients(&self.registry, rtype, id, res);
                owned_patients.iter().map(String::as_str).collect()
            }
        };
        if patients.is_empty() {
            return true; // not patient-level
        }
        let mut facts: Option<ResourceFacts<'_>> = None;
        match &self.mode {
            Mode::Unrestricted => true,
            Mode::NoPatientData => false,
            Mode::Member(v) => patients.iter().all(|pid| {
                let records = v.persons.records(pid);
                let related = !v.care_relationship || records.iter().any(|r| v.related.contains(*r));
                let consents: Vec<&PrivacyConsent> = records.iter().filter_map(|r| v.consents.get(*r)).flatten().map(|c| &**c).collect();
                let decision = if consents.is_empty() {
                    None
                } else {
                    let a = AccessFacts { member: Some(&v.member_ref), purpose: Some(&v.purpose), now: self.now };
                    consent::decide(consents, &a, facts.get_or_insert_with(|| ResourceFacts::of(rtype, id, res)))
                };
                let consented = match decision {
                    Some(d) => d.rule == Rule::Permit,
                    None => v.default_policy == DefaultPolicy::OptOut,
                };
                (related && consented)
                    || source_names_member(res, &v.member)
                    || v.owned.get(&format!("{rtype}/{id}")).is_some_and(|ps| ps.iter().any(|p| records.contains(&p.as_str())))
            }),
            Mode::Secondary(v) => patients.iter().all(|pid| {
                let records = v.persons.records(pid);
                let consents: Vec<&PrivacyConsent> = records.iter().filter_map(|r| v.consents.get(*r)).flatten().map(|c| &**c).collect();
                if consents.is_empty() {
                    return true;
                }
                let f = facts.get_or_insert_with(|| ResourceFacts::of(rtype, id, res));
                !v.purposes.iter().any(|p| {
                    let a = AccessFacts { member: v.reader.as_deref(), purpose: Some(p), now: self.now };
                    consent::decide(consents.iter().copied(), &a, f).is_some_and(|d| d.rule == Rule::Deny && d.explicit)
                })
            }),
        }
    }
}

/// The records a care relationship of `member` names: the candidate
/// resources that reference the member Organization (or, for CareTeams, one
/// of its practitioners), decided by `relationship::direct`.
async fn related_records(services: &Services, member: &str, now: i64) -> Result<HashSet<String>, StoreError> {
    let types = relationship::FACT_TYPES.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
    let mut sql = Sql::new(format!(
        "SELECT {RESOURCE_COLUMNS} FROM resources r WHERE r.deleted = 0 AND r.rtype IN ({types}) AND r.rkey IN \
         (SELECT rkey FROM idx_reference WHERE target_type = 'Organization' AND target_id = "
    ));
    sql.text_param(member).push(")");
    let mut rows = services.store.query(sql).await?;
    let staff = relationship::member_practitioners(services, member).await?;
    if !staff.is_empty() {
        let mut sql = Sql::new(format!(
            "SELECT {RESOURCE_COLUMNS} FROM resources r WHERE r.deleted = 0 AND r.rtype = 'CareTeam' AND r.rkey IN \
             (SELECT rkey FROM idx_reference WHERE rtype = 'CareTeam' AND ("
        ));
        let mut first = true;
        for s in &staff {
            let (Some(t), Some(id)) = reference::parse(s) else { continue };
            if !std::mem::take(&mut first) {
                sql.push(" OR ");
            }
            sql.push("(target_type = ").text_param(t).push(" AND target_id = ").text_param(id).push(")");
        }
        sql.push("))");
        rows.extend(services.store.query(sql).await?);
    }
    let mut out = HashSet::new();
    for row in rows {
        let Some(v) = row.body.as_deref().and_then(|b| serde_json::from_slice::<Value>(b).ok()) else { continue };
        let related = relationship::direct(&row.rtype, &v, member, now).is_some()
            || (row.rtype == "CareTeam"
                && matches!(relationship::status(&v), "active" | "")
                && relationship::period_covers(v.get("period"), now)
                && relationship::refs_at(&v, &["/participant/*/member/reference", "/participant/*/onBehalfOf/reference"])
                    .into_iter()
                    .any(|r| matches!(reference::parse(r), (Some(t), Some(i)) if staff.contains(&format!("{t}/{i}")))));
        if related {
            out.extend(compartment_patients(&services.registry, &row.rtype, &row.id, &v));
        }
    }
    Ok(out)
}

/// `Type/id` of every resource a Provenance attributes to `member`
/// (`agent.who`), with that Provenance's patients.
async fn provenance_owned(services: &Services, member: &str) -> Result<HashMap<String, Vec<String>>, StoreError> {
    let mut sql = Sql::new(
        "SELECT t.target_type || '/' || t.target_id, p.target_id FROM idx_reference a \
         JOIN idx_reference t ON t.rkey = a.rkey AND t.param = 'target' \
         JOIN idx_reference p ON p.rkey = a.rkey AND p.param = 'patient' AND p.target_type = 'Patient' \
         WHERE a.rtype = 'Provenance' AND a.param = 'agent' AND a.target_type = 'Organization' AND a.target_id = ",
    );
    sql.text_param(member).push(" AND t.target_type IS NOT NULL AND t.target_id IS NOT NULL AND p.target_id IS NOT NULL");
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (target, pid) in services.store.pairs(sql).await? {
        let v = out.entry(target).or_default();
        if !v.contains(&pid) {
            v.push(pid);
        }
    }
    Ok(out)
}
