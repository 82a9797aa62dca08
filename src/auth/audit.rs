//! Access audit records in the shapes of IHE Basic Audit Log Patterns
//! (BALP, `https://profiles.ihe.net/ITI/BALP/`: "Basic AuditEvent for a
//! successful RESTful operation" and its Create/Read/Update/Delete/Query
//! variants) on FHIR R4 `AuditEvent`:
//!
//! * `type` = DICOM `rest` (`http://terminology.hl7.org/CodeSystem/audit-event-type`),
//!   `subtype` = the FHIR restful interaction (`http://hl7.org/fhir/restful-interaction`:
//!   `read`, `vread`, `search-type`, `history-instance`, `create`, `update`,
//!   `delete`, `operation`) plus the carebridge interaction name;
//! * `action` C/R/U/D/E, `outcome` 0/4/8 from the HTTP status, `purposeOfEvent`
//!   from the caller's purpose of use;
//! * `agent`: the client (DCM 110153 source role, requestor), its member
//!   Organization, and the gateway (DCM 110152 destination role);
//! * `entity`: the patient (object-role 1 "Patient"), the data (object-role 4
//!   "Domain Resource") or the query (object-role 24 "Query", base64);
//! * a change that gave the writing member a care relationship (an
//!   Encounter it provides, a CareTeam naming it, …) carries the subtype
//!   `urn:carebridge:audit#care-relationship` naming those resources.
//!
//! Pure functions: the pipeline writes these records (in the change's own
//! transaction for writes, before the response for reads).
//!
//! Invariant: a record carries references and codes only — no resource
//! content, no search values other than the query string the client sent.

use super::policy::Interaction;
use super::Caller;
use base64::Engine;
use serde_json::{json, Value};

/// The code system of carebridge's own audit codes.
pub const AUDIT_SYSTEM: &str = "urn:carebridge:audit";

/// What one audited request did.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    pub caller: Caller,
    pub interaction: Interaction,
    /// resource type addressed (None: ingest / system level)
    pub rtype: Option<String>,
    /// `Type/id` (or `Type/id/_history/v`) of the data read or written
    pub data: Vec<String>,
    /// `Patient/id` the access concerns (BALP patient entity)
    pub patients: Vec<String>,
    /// query string of a search (decoded pairs re-encoded)
    pub query: Option<String>,
    /// HTTP status of the answer
    pub status: u16,
    /// failure description (never patient data)
    pub failure: Option<String>,
    /// request path without query (for the operation name)
    pub operation: Option<String>,
    /// a batch/transaction Bundle (restful interaction `transaction`)
    pub bundle: bool,
    /// `Type/id (kind)` of the written resources that gave the writing
    /// member a care relationship it did not have through them before
    pub relationships: Vec<String>,
}

fn restful_code(i: Interaction, rtype: Option<&str>, has_id: bool) -> &'static str {
    match i {
        Interaction::Read => "read",
        Interaction::Vread => "vread",
        Interaction::Search => {
            if rtype.is_some() {
                "search-type"
            } else {
                "search-system"
            }
        }
        Interaction::History => match (rtype, has_id) {
            (Some(_), true) => "history-instance",
            (Some(_), false) => "history-type",
            _ => "history-system",
        },
        Interaction::Create => "create",
        Interaction::Update => "update",
        Interaction::Delete => "delete",
        _ => "operation",
    }
}

fn action(i: Interaction) -> &'static str {
    match i {
        Interaction::Create | Interaction::Hl7v2 | Interaction::Import => "C",
        Interaction::Read | Interaction::Vread => "R",
        Interaction::Update | Interaction::Link => "U",
        Interaction::Delete => "D",
        _ => "E",
    }
}

fn outcome(status: u16) -> &'static str {
    match status {
        0..=399 => "0",
        400..=499 => "4",
        _ => "8",
    }
}

/// The AuditEvent for one request (no id/meta: the writer sets them).
pub fn audit_event(r: &AccessRecord, recorded: &str) -> Value {
    let has_id = r.data.iter().any(|d| d.contains('/'));
    let mut subtype = if r.bundle {
        vec![json!({"system": "http://hl7.org/fhir/restful-interaction", "code": "transaction"})]
    } else {
        vec![
            json!({"system": "http://hl7.org/fhir/restful-interaction", "code": restful_code(r.interaction, r.rtype.as_deref(), has_id)}),
            json!({"system": AUDIT_SYSTEM, "code": r.interaction.as_str()}),
        ]
    };
    if let Some(op) = &r.operation {
        subtype.push(json!({"system": AUDIT_SYSTEM, "code": "path", "display": op}));
    }
    if !r.relationships.is_empty() {
        subtype.push(json!({"system": AUDIT_SYSTEM, "code": "care-relationship", "display": r.relationships.join(", ")}));
    }
    let mut agent = vec![json!({
        "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110153", "display": "Source Role ID"}]},
        "who": {"identifier": {"system": "urn:carebridge:client", "value": r.caller.client_id}},
        "requestor": true,
    })];
    if let Some(m) = r.caller.member_reference() {
        agent.push(json!({
            "type": {"coding": [{"system": AUDIT_SYSTEM, "code": "member", "display": r.caller.member_type.as_str()}]},
            "who": {"reference": m},
            "requestor": false,
        }));
    }
    agent.push(json!({
        "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110152", "display": "Destination Role ID"}]},
        "who": {"display": "carebridge"},
        "requestor": false,
    }));
    let mut entity: Vec<Value> = vec![];
    for p in &r.patients {
        entity.push(json!({
            "what": {"reference": p},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"},
        }));
    }
    for d in &r.data {
        entity.push(json!({
            "what": {"reference": d},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4", "display": "Domain Resource"},
        }));
    }
    if let Some(q) = &r.query {
        entity.push(json!({
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query"},
            "query": base64::engine::general_purpose::STANDARD.encode(q.as_bytes()),
        }));
    }
    let mut ae = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "Restful Operation"},
        "subtype": subtype,
        "action": action(r.interaction),
        "recorded": recorded,
        "outcome": outcome(r.status),
        "agent": agent,
        "source": {
            "observer": {"display": "carebridge"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}],
        },
    });
    if let Some(f) = &r.failure {
        ae["outcomeDesc"] = json!(f);
    }
    if let Some(p) = &r.caller.purpose_of_use {
        ae["purposeOfEvent"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": p}]}]);
    }
    if !entity.is_empty() {
        ae["entity"] = Value::Array(entity);
    }
    ae
}

/// `Patient/{id}` references a resource concerns: itself for a Patient,
/// else its `subject`/`patient` (and `beneficiary`) when they point at a Patient.
pub fn patients_of(rtype: &str, id: &str, res: &Value) -> Vec<String> {
    if rtype == "Patient" {
        return vec![format!("Patient/{id}")];
    }
    let mut out = vec![];
    for k in ["subject", "patient", "beneficiary"] {
        if let Some(r) = res.get(k).and_then(|s| s.get("reference")).and_then(Value::as_str) {
            if let Some(rest) = r.strip_prefix("Patient/") {
                let p = format!("Patient/{}", rest.split('/').next().unwrap_or(rest));
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::MemberType;

    #[test]
    fn balp_shape() {
        let caller = Caller {
            client_id: "kln-ehr".into(),
            member: Some("klinikum-nord".into()),
            member_type: MemberType::Hospital,
            scopes: vec![],
            purpose_of_use: Some("TREAT".into()),
        };
        let r = AccessRecord {
            caller,
            interaction: Interaction::Read,
            rtype: Some("Observation".into()),
            data: vec!["Observation/o1".into()],
            patients: vec!["Patient/p1".into()],
            query: None,
            status: 200,
            failure: None,
            operation: None,
            bundle: false,
            relationships: vec![],
        };
        let ae = audit_event(&r, "2026-01-01T00:00:00Z");
        assert_eq!(ae["type"]["code"], "rest");
        assert_eq!(ae["subtype"][0]["code"], "read");
        assert_eq!(ae["action"], "R");
        assert_eq!(ae["outcome"], "0");
        assert_eq!(ae["agent"][1]["who"]["reference"], "Organization/klinikum-nord");
        assert_eq!(ae["entity"][0]["role"]["code"], "1");
        assert_eq!(ae["entity"][0]["what"]["reference"], "Patient/p1");
        assert_eq!(ae["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
        let obs = json!({"resourceType": "Observation", "subject": {"reference": "Patient/p9"}});
        assert_eq!(patients_of("Observation", "o", &obs), vec!["Patient/p9"]);
        assert_eq!(patients_of("Patient", "p1", &obs), vec!["Patient/p1"]);
    }
}
