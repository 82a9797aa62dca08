//! HL7 v2 ingest (HL7 v2.5.1 ch. 2: original-mode acknowledgment): one ER7
//! message → parse → translate (`translate::hl7v2::map`) → one FHIR
//! transaction through the write pipeline → the ACK.
//!
//! | outcome | MSA-1 | stored |
//! |---|---|---|
//! | translated and stored | `AA` (with ERR warnings, if any) | everything |
//! | message not parseable, unsupported type or event | `AR` | nothing |
//! | data errors (bad timestamp, missing required field), FHIR validation failure, conflicting write | `AE` with ERR segments naming the location | nothing |
//!
//! The institution is chosen from MSH-4 (sending facility): configured
//! institutions by facility code, otherwise an id derived from MSH-4
//! (lower-case, `[a-z0-9-]`), with the default time zone. Times without an
//! offset take the institution's zone (default `Europe/Berlin`).

use crate::fhir::datetime;
use crate::pipeline::{bundle_entries, EntryResult, Pipeline};
use crate::services::Services;
use crate::translate::hl7v2::map::{translate, InstitutionConfig};
use crate::translate::hl7v2::{ack_for, build_ack, AckCode, AckError, InboundHeader, Message, MessageBuf, Severity};
use serde_json::{json, Value};
use std::collections::HashMap;

/// Institutions by sending facility (MSH-4.1, case-insensitive).
#[derive(Clone, Debug, Default)]
pub struct Hl7Config {
    pub institutions: HashMap<String, InstitutionConfig>,
    /// zone for senders that are not configured (default `Europe/Berlin`)
    pub default_zone: Option<crate::translate::hl7v2::Zone>,
}

impl Hl7Config {
    pub fn institution_for(&self, facility: &str) -> InstitutionConfig {
        let key = facility.trim().to_ascii_lowercase();
        if let Some(c) = self.institutions.get(&key) {
            return c.clone();
        }
        let id: String = key.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        let id = id.trim_matches('-').to_owned();
        let mut c = InstitutionConfig::new(if id.is_empty() { "unknown-facility".to_owned() } else { id });
        if let Some(z) = &self.default_zone {
            c.time_zone = z.clone();
        }
        c
    }
}

/// The answer to one message.
#[derive(Debug, Clone)]
pub struct Hl7Outcome {
    pub code: AckCode,
    /// the ACK message (ER7, CR segment ends)
    pub ack: String,
    /// the FHIR transaction-response Bundle (AA) or the OperationOutcome (AE from the pipeline)
    pub fhir: Option<Value>,
    /// `Provenance/<id>` written for the message (AA)
    pub provenance: Option<String>,
    /// AR because the sender may not send for the message's institution
    /// (`Caller::may_send_for`); the HTTP endpoint answers 403
    pub forbidden: bool,
}

impl Hl7Outcome {
    /// The HTTP status of the answer (also the audit record's): 200 `AA`,
    /// 422 `AE`, 400 `AR`, 403 for a sender refused for the institution.
    pub fn http_status(&self) -> u16 {
        match self.code {
            _ if self.forbidden => 403,
            AckCode::AA | AckCode::CA => 200,
            AckCode::AE | AckCode::CE => 422,
            _ => 400,
        }
    }
}

/// v2 timestamp for MSH-7 of the ACK (UTC).
pub fn v2_now() -> String {
    let iso = datetime::format_instant(datetime::now_micros()); // 2026-11-23T10:00:00.000Z
    let digits: String = iso[..19].chars().filter(char::is_ascii_digit).collect();
    format!("{digits}+0000")
}

pub fn ack_control_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..20].to_owned()
}

fn reject(header: &InboundHeader, code: AckCode, errors: &[AckError]) -> Hl7Outcome {
    Hl7Outcome { code, ack: build_ack(header, code, &ack_control_id(), &v2_now(), errors), fhir: None, provenance: None, forbidden: false }
}

fn response_bundle(results: &[EntryResult]) -> Value {
    let entries: Vec<Value> = results
        .iter()
        .map(|r| {
            let mut resp = json!({"status": r.status.to_string()});
            if let Some(l) = &r.location {
                resp["location"] = json!(l);
            }
            if let Some(v) = r.version {
                resp["etag"] = json!(format!("W/\"{v}\""));
            }
            json!({"response": resp})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction-response", "entry": entries})
}

const V2_TABLE: &str = "http://terminology.hl7.org/CodeSystem/v2-";

/// Codes of user-defined v2 tables (hospital service 0069, admit source
/// 0023, marital status 0002, …) are often the sender's own values. The
/// translator puts a table-coded value into the HL7 table's CodeSystem
/// (`http://terminology.hl7.org/CodeSystem/v2-nnnn`); when that CodeSystem is
/// complete in the terminology package and does not contain the code, the
/// code is the institution's, so its system becomes
/// `urn:carebridge:<institution>:cs:v2-nnnn` and the ACK carries a warning
/// (HL7 table 0357 code 103 "table value not found"). Standard values keep
/// the HL7 system.
fn localize_table_codes(services: &Services, institution: &str, bundle: &mut Value, warnings: &mut Vec<AckError>) {
    fn walk(v: &mut Value, f: &mut dyn FnMut(&mut serde_json::Map<String, Value>)) {
        match v {
            Value::Object(m) => {
                f(m);
                for c in m.values_mut() {
                    walk(c, f);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|c| walk(c, f)),
            _ => {}
        }
    }
    let term = &services.validator.terminology;
    let mut seen: Vec<(String, String)> = vec![];
    walk(bundle, &mut |m| {
        let (Some(Value::String(system)), Some(Value::String(code))) = (m.get("system"), m.get("code")) else { return };
        let Some(table) = system.strip_prefix(V2_TABLE) else { return };
        let Some(cs) = term.code_system(system) else { return };
        let known = cs.codes.contains_key(code.as_str())
            || (!cs.case_sensitive && cs.codes.keys().any(|k| k.eq_ignore_ascii_case(code)));
        if !cs.complete || known {
            return;
        }
        let (table, code) = (table.to_owned(), code.clone());
        m.insert("system".into(), Value::String(format!("urn:carebridge:{institution}:cs:v2-{table}")));
        if !seen.contains(&(table.clone(), code.clone())) {
            warnings.push(
                AckError::new(103, Severity::Warning)
                    .message(format!("'{code}' is not a value of HL7 table {table}; kept as the institution's local code")),
            );
            seen.push((table, code));
        }
    });
}

/// Extensions the translator may write whose definitions are not in the
/// core or extensions packages (the German `gender-amtlich-de` on
/// `Patient.gender`) are kept only when a loaded profile pack defines them;
/// otherwise they are removed before validation (an undefined extension on
/// a primitive is invalid FHIR) and the ACK says so (warning 207).
fn drop_unknown_extensions(services: &Services, bundle: &mut Value, warnings: &mut Vec<AckError>) {
    fn walk(v: &mut Value, known: &dyn Fn(&str) -> bool, dropped: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                let mut empty_keys = vec![];
                for (k, c) in m.iter_mut() {
                    if k == "extension" || k == "modifierExtension" {
                        if let Value::Array(a) = c {
                            a.retain(|x| match x.get("url").and_then(Value::as_str) {
                                Some(u) if u.contains(':') && !known(u) => {
                                    if !dropped.iter().any(|d| d == u) {
                                        dropped.push(u.to_owned());
                                    }
                                    false
                                }
                                _ => true,
                            });
                            if a.is_empty() {
                                empty_keys.push(k.clone());
                            }
                        }
                    } else {
                        walk(c, known, dropped);
                        if c.as_object().is_some_and(|o| o.is_empty()) && k.starts_with('_') {
                            empty_keys.push(k.clone());
                        }
                    }
                }
                for k in empty_keys {
                    m.remove(&k);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|c| walk(c, known, dropped)),
            _ => {}
        }
    }
    let v = &services.validator;
    let mut dropped = vec![];
    walk(bundle, &|u| v.definition(u).is_some(), &mut dropped);
    for u in dropped {
        warnings.push(AckError::new(207, Severity::Warning).message(format!("extension {u} is not defined by a loaded profile pack; left out")));
    }
}

/// Handle one message (bytes as received: UTF-8, optionally with a BOM, or
/// Latin-1 when MSH-18 says so).
pub async fn handle(services: &Services, cfg: &Hl7Config, raw: &[u8]) -> Hl7Outcome {
    handle_audited(services, cfg, raw, None).await
}

/// [`handle`], writing the request's AuditEvent in the message's transaction.
pub async fn handle_audited(services: &Services, cfg: &Hl7Config, raw: &[u8], audit: Option<crate::auth::audit::AccessRecord>) -> Hl7Outcome {
    handle_for(services, cfg, raw, None, audit).await
}

/// [`handle_audited`] for an authenticated `sender`: a member that is not
/// an integration engine or operator may send only for institutions mapped
/// to itself (`Caller::may_send_for`); otherwise AR, nothing stored.
pub async fn handle_for(
    services: &Services,
    cfg: &Hl7Config,
    raw: &[u8],
    sender: Option<&crate::auth::Caller>,
    audit: Option<crate::auth::audit::AccessRecord>,
) -> Hl7Outcome {
    let buf = match MessageBuf::from_bytes(raw) {
        Ok(b) => b,
        Err(e) => return reject(&InboundHeader::default(), AckCode::AR, &[AckError::from(&e)]),
    };
    let msg: Message<'_> = buf.message();
    let header = InboundHeader::from_message(&msg);
    let facility = msg.header().field(4).component(1).decoded().into_owned();
    let inst = cfg.institution_for(&facility);
    if let Some(Err(m)) = sender.map(|c| c.may_send_for(&inst.institution_id, inst.member.as_deref())) {
        let mut out = reject(&header, AckCode::AR, &[AckError::new(207, Severity::Error).message(format!("MSH-4 '{facility}': {m}"))]);
        out.forbidden = true;
        return out;
    }
    let received = datetime::format_instant(datetime::now_micros());
    let mut t = match translate(&msg, raw, &inst, &received) {
        Ok(t) => t,
        Err(errors) => {
            let unsupported = errors.iter().any(|e| matches!(e.code, 200..=203));
            let code = if unsupported { AckCode::AR } else { AckCode::AE };
            return reject(&header, code, &errors);
        }
    };
    localize_table_codes(services, &inst.institution_id, &mut t.bundle, &mut t.warnings);
    drop_unknown_extensions(services, &mut t.bundle, &mut t.warnings);
    let entries = match bundle_entries(&t.bundle) {
        Ok(e) => e,
        Err(m) => return reject(&header, AckCode::AE, &[AckError::new(207, Severity::Error).message(m)]),
    };
    match Pipeline::new(services).audited(audit).transaction(entries).await {
        Ok(results) => {
            let provenance = results
                .iter()
                .filter_map(|r| r.target.as_ref())
                .find(|(t, _)| t == "Provenance")
                .map(|(t, id)| format!("{t}/{id}"));
            let ack = ack_for(&msg, AckCode::AA, &ack_control_id(), &v2_now(), &t.warnings);
            Hl7Outcome { code: AckCode::AA, ack, fhir: Some(response_bundle(&results)), provenance, forbidden: false }
        }
        Err(e) => {
            let oo = e.outcome();
            // 207 application internal error: the message was understood but could not be stored as FHIR
            let code_0357 = 207;
            let errors: Vec<AckError> = oo
                .issues
                .iter()
                .filter(|i| i.severity <= crate::fhir::Severity::Error)
                .take(20)
                .map(|i| {
                    let mut text = i.diagnostics.clone();
                    if let Some(x) = i.expression.first() {
                        text = format!("{text} ({x})");
                    }
                    AckError::new(code_0357, Severity::Error).message(text)
                })
                .collect();
            let ack = ack_for(&msg, AckCode::AE, &ack_control_id(), &v2_now(), &errors);
            Hl7Outcome { code: AckCode::AE, ack, fhir: Some(oo.to_json()), provenance: None, forbidden: false }
        }
    }
}
