//! The read filter: what of a patient's data a [`Caller`] may see (issue 7
//! "Care relationship" and "Consent"; FHIR R4 `security.html`,
//! `consent.html`, `security-labels.html` for the break-glass label). Every
//! read path — read, vread, history, search with `_include`/`_revinclude`,
//! `$everything`, `$summary`, and later exports and subscriptions — passes
//! its rows through one [`Access`] per request (or [`filter_rows`]) before
//! anything leaves the process.
//!
//! Per caller:
//! * the development operator (no authentication configured), operators
//!   and integration engines are not filtered (the role policy decides
//!   what they may do at all);
//! * an insurer sees nothing patient-level (defence in depth behind the
//!   role policy);
//! * a clinical member sees a patient-level resource when, for every
//!   patient the resource belongs to (its Patient compartment, R4
//!   `compartmentdefinition-patient.html`), it has a care relationship with
//!   the person (`relationship`, unless `[access] care_relationship =
//!   false`) **and** the person's privacy Consents permit it (`consent`;
//!   without a deciding Consent: `[access] default_policy`, opt-in denies,
//!   opt-out permits). Resources outside every Patient compartment
//!   (Organization, Practitioner, Medication, …) are not patient-level,
//!   except Task, Contract, Device and GuidanceResponse, which R4 leaves out
//!   of the compartment although they name a patient
//!   ([`OUTSIDE_COMPARTMENT`]).
//!
//! "Cross-institution" is defined by what the member itself sent: a
//! resource is the member's own — always visible to it, whatever the
//! relationship or Consent — when its `meta.source` is
//! `urn:carebridge:member:{member}` (or ends in `Organization/{member}`),
//! or a Provenance attributes it to the member (`Provenance.agent.who` =
//! `Organization/{member}` with the resource as `target`, which HL7 v2
//! ingest and CSV/JSON import write for every translated record).
//!
//! **Break-glass**: when the request's purpose of use is one of
//! `[access] break_glass` (default `ETREAT`, `BTG`; `Caller.purpose_of_use`,
//! from the `X-Purpose-Of-Use` header or the token), a clinical member also
//! sees what relationship or Consent would have withheld — except what a
//! Consent provision naming that very purpose denies. Each resource
//! released that way carries the security label `v3-ActReason#BTG` in
//! `meta.security`; [`Access::break_glass_patients`] lists the patients, for
//! the response header and the AuditEvent (`purposeOfUse`) the API writes.
//!
//! Facts are loaded through index-backed queries (see `relationship`),
//! once per person and member: [`Access`] keeps them for the request, and
//! the process-wide `services::access::FactsCache` across requests until
//! the next committed change (at most its TTL, 2 s, for changes made by
//! another replica).
//!
//! Invariant: a row leaves a read path only after [`Access::decide`] (or
//! [`Access::filter`]) permitted it for the request's caller.

use super::consent::{self, AccessFacts, ResourceFacts, Rule};
use super::relationship::{self, PersonFacts};
use super::{Caller, MemberType};
use crate::fhir::datetime;
use crate::services::access::DefaultPolicy;
use crate::services::Services;
use crate::store::{ResourceRow, StoreError};
use bytes::Bytes;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// the caller may not see this (the message names why, never patient data)
    #[error("{0}")]
    Denied(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The system of the break-glass security label and purpose of use.
pub const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// Why a resource is withheld.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// insurer (or a member without Organization): no patient-level data
    PatientLevel,
    /// no care relationship with the person
    NoRelationship,
    /// the person's Consent (or the region's default policy) does not permit it
    Consent,
}

impl Denial {
    pub fn message(self) -> &'static str {
        match self {
            Denial::PatientLevel => "this member may not read patient-level data",
            Denial::NoRelationship => "no care relationship with this patient (break-glass: X-Purpose-Of-Use: ETREAT or BTG)",
            Denial::Consent => "the patient's consent does not permit this access",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Permit,
    /// permitted only because the glass was broken
    BreakGlass,
    Deny(Denial),
}

/// Patient-level types outside R4's Patient compartment, with the reference
/// parameter that names their patient (`Task.for`, `Device.patient`, …).
pub const OUTSIDE_COMPARTMENT: &[(&str, &str)] = &[("Task", "patient"), ("Contract", "patient"), ("Device", "patient"), ("GuidanceResponse", "patient")];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    Unrestricted,
    NoPatientData,
    Member(String),
}

/// One request's access decisions, with per-person facts cached.
pub struct Access<'a> {
    services: &'a Services,
    scope: Scope,
    purpose: Option<String>,
    break_glass: bool,
    now: i64,
    persons: HashMap<String, Arc<PersonFacts>>,
    owned: HashMap<String, Arc<HashSet<(String, String)>>>,
    bg_patients: BTreeSet<String>,
    withheld: usize,
}

impl<'a> Access<'a> {
    pub fn new(services: &'a Services, caller: &Caller) -> Access<'a> {
        let scope = match caller.member_type {
            MemberType::Operator | MemberType::IntegrationEngine => Scope::Unrestricted,
            MemberType::Insurer => Scope::NoPatientData,
            t if t.is_clinical() => match &caller.member {
                Some(m) => Scope::Member(m.clone()),
                None => Scope::NoPatientData,
            },
            _ => Scope::NoPatientData,
        };
        // a clinical caller that asserts no purpose reads for treatment
        let purpose = caller.purpose_of_use.clone().or_else(|| caller.member_type.is_clinical().then(|| "TREAT".to_owned()));
        let break_glass = caller.member_type.is_clinical() && purpose.as_ref().is_some_and(|p| services.access.break_glass.iter().any(|b| b == p));
        Access {
            services,
            scope,
            purpose,
            break_glass,
            now: datetime::now_micros(),
            persons: HashMap::new(),
            owned: HashMap::new(),
            bg_patients: BTreeSet::new(),
            withheld: 0,
        }
    }

    /// An unfiltered reader for internal reads whose rows pass another
    /// filter before they leave (the report/export row filter).
    pub fn internal(services: &'a Services) -> Access<'a> {
        Access::new(services, &Caller::dev_operator())
    }

    /// Nothing is filtered for this caller.
    pub fn is_unrestricted(&self) -> bool {
        self.scope == Scope::Unrestricted
    }

    /// Patients whose data was released by break-glass in this request.
    pub fn break_glass_patients(&self) -> &BTreeSet<String> {
        &self.bg_patients
    }

    /// The purpose of use in force (for audit).
    pub fn purpose(&self) -> Option<&str> {
        self.purpose.as_deref()
    }

    /// How many rows [`Access::filter`] withheld so far.
    pub fn withheld(&self) -> usize {
        self.withheld
    }

    /// The Patient ids a resource belongs to (its Patient compartment).
    pub fn patients_of(&self, rtype: &str, id: &str, res: &Value) -> Vec<String> {
        compartment_patients(&self.services.registry, rtype, id, res)
    }

    /// The facts about the person of Patient `pid` (cached for the request).
    pub async fn person(&mut self, pid: &str) -> Result<Arc<PersonFacts>, AccessError> {
        if let Some(p) = self.persons.get(pid) {
            return Ok(p.clone());
        }
        let member = match &self.scope {
            Scope::Member(m) => Some(m.clone()),
            _ => None,
        };
        // across requests: the process-wide cache, valid until the next
        // committed change (services::access::FactsCache)
        let key = format!("person\u{1f}{pid}\u{1f}{}", member.as_deref().unwrap_or(""));
        let facts = self.services.facts.get_or_load(key, relationship::person_facts(self.services, pid, member.as_deref(), datetime::now_micros())).await?;
        self.persons.insert(pid.to_owned(), facts.clone());
        Ok(facts)
    }

    async fn owned_by_member(&mut self, person: &PersonFacts, member: &str, rtype: &str, id: &str, res: &Value) -> Result<bool, AccessError> {
        if source_names_member(res, member) {
            return Ok(true);
        }
        let key = person.records.first().cloned().unwrap_or_default();
        let set = match self.owned.get(&key) {
            Some(s) => s.clone(),
            None => {
                let shared = format!("owned\u{1f}{}\u{1f}{member}", person.records.join(","));
                let s = self.services.facts.get_or_load(shared, relationship::provenance_owned(self.services, &person.records, member)).await?;
                self.owned.insert(key, s.clone());
                s
            }
        };
        Ok(set.contains(&(rtype.to_owned(), id.to_owned())))
    }

    /// The decision for one resource (`res` its JSON).
    pub async fn decide(&mut self, rtype: &str, id: &str, res: &Value) -> Result<Verdict, AccessError> {
        let member = match &self.scope {
            Scope::Unrestricted => return Ok(Verdict::Permit),
            Scope::NoPatientData => None,
            Scope::Member(m) => Some(m.clone()),
        };
        let patients = self.patients_of(rtype, id, res);
        if patients.is_empty() {
            return Ok(Verdict::Permit);
        }
        let Some(member) = member else { return Ok(Verdict::Deny(Denial::PatientLevel)) };
        // what the member itself created is its own, whatever the
        // relationship or Consent: decided on the resource alone
        if source_names_member(res, &member) {
            return Ok(Verdict::Permit);
        }
        let member_ref = format!("Organization/{member}");
        let cfg = self.services.access.clone();
        let mut verdict = Verdict::Permit;
        let mut facts: Option<ResourceFacts<'_>> = None;
        for pid in &patients {
            let person = self.person(pid).await?;
            let related = !cfg.care_relationship || person.relationship.is_some();
            let decision = if person.consents.is_empty() {
                None
            } else {
                let a = AccessFacts { member: Some(&member_ref), purpose: self.purpose.as_deref(), now: self.now };
                let f = facts.get_or_insert_with(|| ResourceFacts::of(rtype, id, res));
                consent::decide(&person.consents, &a, f)
            };
            let consented = match decision {
                Some(d) => d.rule == Rule::Permit,
                None => cfg.default_policy == DefaultPolicy::OptOut,
            };
            if related && consented {
                continue;
            }
            if self.owned_by_member(&person, &member, rtype, id, res).await? {
                continue;
            }
            let purpose_denied = decision.is_some_and(|d| d.rule == Rule::Deny && d.purpose_specific);
            if self.break_glass && !purpose_denied {
                verdict = Verdict::BreakGlass;
                continue;
            }
            return Ok(Verdict::Deny(if related { Denial::Consent } else { Denial::NoRelationship }));
        }
        if verdict == Verdict::BreakGlass {
            self.bg_patients.extend(patients);
        }
        Ok(verdict)
    }

    /// [`Access::decide`] on stored bytes: the bytes to send (break-glass
    /// labelled when needed), or the denial. Unparseable bytes are withheld
    /// from restricted callers.
    pub async fn check_bytes(&mut self, rtype: &str, id: &str, body: &Bytes) -> Result<Result<Bytes, Denial>, AccessError> {
        if self.is_unrestricted() {
            return Ok(Ok(body.clone()));
        }
        let Ok(v) = serde_json::from_slice::<Value>(body) else { return Ok(Err(Denial::Consent)) };
        Ok(match self.decide(rtype, id, &v).await? {
            Verdict::Permit => Ok(body.clone()),
            Verdict::BreakGlass => Ok(label_break_glass(v)),
            Verdict::Deny(d) => Err(d),
        })
    }

    /// Keep the rows the caller may see (bodies of break-glass releases
    /// labelled); rows without a body (deleted) are withheld from
    /// restricted callers.
    pub async fn filter(&mut self, rows: Vec<ResourceRow>) -> Result<Vec<ResourceRow>, AccessError> {
        if self.is_unrestricted() {
            return Ok(rows);
        }
        let mut out = Vec::with_capacity(rows.len());
        for mut row in rows {
            let Some(body) = row.body.clone() else {
                self.withheld += 1;
                continue;
            };
            match self.check_bytes(&row.rtype, &row.id, &body).await? {
                Ok(b) => {
                    row.body = Some(b);
                    out.push(row);
                }
                Err(_) => self.withheld += 1,
            }
        }
        Ok(out)
    }
}

/// Types whose changes the workflow rules decide (owner / requester /
/// author / participants, `workflow`), not [`may_change`].
pub const WORKFLOW_TYPES: &[&str] = &["Task", "CarePlan", "CareTeam"];

/// May `caller` update or delete the stored resource `current` (its live
/// version's bytes)? Restricted callers (clinical members, the insurer) may
/// change a patient-level resource only when they may read it — a care
/// relationship with every patient it belongs to and their Consent, or the
/// member created it (`meta.source`, which the pipeline sets on a member's
/// creates and keeps on its updates, or a Provenance naming the member) —
/// and break-glass never extends to changes.
/// Task, CarePlan and CareTeam follow the workflow rules instead
/// ([`WORKFLOW_TYPES`]). Operators, integration engines and system sources
/// (no caller) are not restricted.
pub async fn may_change(services: &Services, caller: &Caller, rtype: &str, id: &str, current: &Bytes) -> Result<(), AccessError> {
    if WORKFLOW_TYPES.contains(&rtype) {
        return Ok(());
    }
    let mut access = Access::new(services, caller);
    if access.is_unrestricted() {
        return Ok(());
    }
    access.break_glass = false;
    let Ok(v) = serde_json::from_slice::<Value>(current) else { return Ok(()) };
    match access.decide(rtype, id, &v).await? {
        Verdict::Permit => Ok(()),
        Verdict::BreakGlass | Verdict::Deny(Denial::PatientLevel) => {
            Err(AccessError::Denied(format!("{rtype}/{id} belongs to a patient's record this member may not change")))
        }
        Verdict::Deny(Denial::NoRelationship) => Err(AccessError::Denied(format!(
            "{who} may not change {rtype}/{id}: no care relationship with the patient, and it did not create it",
            who = caller.member_reference().unwrap_or_else(|| caller.client_id.clone())
        ))),
        Verdict::Deny(Denial::Consent) => Err(AccessError::Denied(format!(
            "{who} may not change {rtype}/{id}: the patient's consent does not permit its access",
            who = caller.member_reference().unwrap_or_else(|| caller.client_id.clone())
        ))),
    }
}

/// The `meta.security` label of a break-glass release.
pub fn break_glass_label() -> Value {
    serde_json::json!({"system": ACT_REASON, "code": "BTG", "display": "break the glass"})
}

fn label_break_glass(mut v: Value) -> Bytes {
    if let Some(o) = v.as_object_mut() {
        let meta = o.entry("meta").or_insert_with(|| Value::Object(Default::default()));
        if let Some(m) = meta.as_object_mut() {
            let sec = m.entry("security").or_insert_with(|| Value::Array(vec![]));
            if let Some(a) = sec.as_array_mut() {
                if !a.iter().any(|c| c["system"] == ACT_REASON && c["code"] == "BTG") {
                    a.push(break_glass_label());
                }
            }
        }
    }
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

/// The Patient ids a resource belongs to: its Patient compartment (R4
/// `compartmentdefinition-patient.html`) plus the patient references of the
/// types in [`OUTSIDE_COMPARTMENT`]; a Patient belongs to itself.
pub fn compartment_patients(reg: &crate::search::Registry, rtype: &str, id: &str, res: &Value) -> Vec<String> {
    if rtype == "Patient" {
        return vec![id.to_owned()];
    }
    let mut out: Vec<String> = vec![];
    let extra = OUTSIDE_COMPARTMENT.iter().filter(|(t, _)| *t == rtype).map(|(t, p)| ((*t).to_owned(), vec![(*p).to_owned()]));
    let members = reg.patient_compartment.iter().filter(|(t, _)| t == rtype).cloned().chain(extra);
    for (t, params) in members {
        for code in &params {
            let Some(sp) = reg.param(&t, code) else { continue };
            for b in &sp.branches {
                for n in crate::search::extract::eval(b, res) {
                    let r = n.v.get("reference").and_then(Value::as_str).or_else(|| n.v.as_str());
                    if let Some((Some(pt), Some(pid))) = r.map(crate::fhir::reference::parse) {
                        if pt == "Patient" && !out.contains(&pid) {
                            out.push(pid);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Does the resource's `meta.source` name the member
/// (`urn:carebridge:member:{member}`, or a reference ending in
/// `Organization/{member}`)? What the gateway sets on a member's creates.
pub fn source_names_member(res: &Value, member: &str) -> bool {
    let Some(src) = res.pointer("/meta/source").and_then(Value::as_str) else { return false };
    src.strip_prefix(MEMBER_SOURCE).is_some_and(|m| m == member) || src == format!("Organization/{member}") || src.ends_with(&format!("/Organization/{member}"))
}

/// The `meta.source` prefix of what a member wrote (`urn:carebridge:member:{member}`).
pub const MEMBER_SOURCE: &str = "urn:carebridge:member:";

/// The one filter for code that reads rows outside an HTTP request's
/// handler (bulk export, reports, subscription notifications): the rows
/// `caller` may see, break-glass releases labelled. Call it on every batch
/// of rows before they leave the process; for several batches of one job,
/// keep one [`Access`] instead (it caches per person).
pub async fn filter_rows(services: &Services, caller: &Caller, rows: Vec<ResourceRow>) -> Result<Vec<ResourceRow>, AccessError> {
    Access::new(services, caller).filter(rows).await
}
