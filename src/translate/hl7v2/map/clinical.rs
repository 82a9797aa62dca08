//! DG1 → Condition, PR1 → Procedure, AL1 → AllergyIntolerance, IN1 →
//! Coverage (+ the insurer's Organization) (v2-to-FHIR IG segment maps
//! DG1[Condition], PR1[Procedure], AL1[AllergyIntolerance], IN1[Coverage];
//! HL7 v2.5.1 ch. 6.5.2 DG1, 6.5.4 PR1, 3.4.6 AL1, 6.5.6 IN1).
//!
//! # Condition (DG1)
//! code DG1-3 (else DG1-4 as text; neither → warning, no Condition);
//! ICD-10-GM (`I10`, `I10GM`, `ICD-10-GM`) →
//! `http://fhir.de/CodeSystem/bfarm/icd-10-gm`; category
//! `encounter-diagnosis`; onsetDateTime DG1-5; recordedDate DG1-19;
//! asserter DG1-16; identifier DG1-20. DG1-21 action code `D` (delete) →
//! a `DELETE Condition/<id>` entry. Key: DG1-20 if given, else the
//! Encounter (or Patient) id + code system + code, so the same diagnosis
//! sent again for the same visit is the same Condition whatever its set id.
//!
//! # Procedure (PR1)
//! status `completed`; code PR1-3 (OPS `OPS`/`O301` →
//! `http://fhir.de/CodeSystem/bfarm/ops`), else PR1-4 text; category PR1-6
//! (table 0230); performedDateTime PR1-5; performer PR1-8 (anesthesiologist),
//! PR1-11 (surgeon), PR1-12 (practitioner); reasonCode PR1-15; identifier
//! PR1-19. Key: PR1-19, else Encounter (or Patient) id + code + PR1-5.
//!
//! # AllergyIntolerance (AL1)
//! clinicalStatus `active` (required when there is no verificationStatus);
//! category/type from AL1-2 (table 0127: DA → medication, FA → food,
//! EA/AA/PA/LA → environment; the `*A` codes are allergies); code AL1-3;
//! reaction from AL1-5 with severity AL1-4 (SV/MO/MI), or criticality
//! from AL1-4 when no reaction is given; onsetDateTime AL1-6. Key: Patient
//! id + code (or text): an allergy belongs to the patient, not the visit.
//!
//! # Coverage (IN1)
//! status `active`; beneficiary = the Patient; payor = the insurer
//! Organization from IN1-3 (id; `IK` authority → IKNR system) / IN1-4
//! (name) / IN1-5 / IN1-7, or the Patient (self-pay) when neither is given
//! (payor is mandatory); type IN1-15 (German `GKV`, `PKV`, `BG`, `SEL`,
//! `SOZ`, `GPV`, `PPV`, `BEI` → `http://fhir.de/CodeSystem/versicherungsart-de-basis`,
//! else table 0086); class plan IN1-2 and group IN1-8/9; period IN1-12/13;
//! relationship IN1-17 (table 0063 → subscriber-relationship);
//! subscriberId IN1-49, else IN1-36; identifier IN1-36 (policy number; for
//! `GKV` coverage a valid KVNR there gets the KVNR system).
//! Keys: insurer = its identifier (or name); Coverage = Patient id +
//! insurer key + plan (IN1-2) + policy number (IN1-36).

use serde_json::Value;

use super::json::obj;

use super::ctx::Ctx;
use super::encounter::diagnosis_use;
use super::patient::PatientRef;
use super::types::{
    address, contact_point, cwe, cwe_table, cx, ei, field_text, floc, pct, practitioner, reps,
    Parts,
};
use crate::translate::hl7v2::Segment;

/// The first coding's `system|code` (or the text) of a CodeableConcept.
fn concept_key(c: &Value) -> String {
    if let Some(coding) = c.get("coding").and_then(|a| a.get(0)) {
        format!(
            "{}|{}",
            coding.get("system").and_then(Value::as_str).unwrap_or(""),
            coding.get("code").and_then(Value::as_str).unwrap_or("")
        )
    } else {
        format!(
            "text|{}",
            c.get("text").and_then(Value::as_str).unwrap_or("")
        )
    }
}

/// DG1 → Condition; returns the Encounter.diagnosis entry for it.
pub(crate) fn condition(
    ctx: &mut Ctx<'_, '_>,
    dg1: &Segment<'_, '_>,
    patient: &PatientRef,
    encounter: Option<(&str, &Value)>,
) -> Option<Value> {
    let code = dg1
        .field(3)
        .repetitions()
        .next()
        .and_then(|r| cwe(ctx, &r))
        .or_else(|| field_text(dg1, 4).map(|t| obj! {"text": t}));
    let Some(code) = code else {
        ctx.warn(
            101,
            Some(floc(dg1, 3, 1)),
            "DG1-3 (diagnosis code) and DG1-4 are empty: no Condition",
        );
        return None;
    };
    let ident_default = format!("urn:carebridge:{}:diagnosis", pct(&ctx.cfg.institution_id));
    let ident = dg1
        .field(20)
        .repetitions()
        .next()
        .and_then(|r| ei(ctx, &r, &ident_default));
    let scope = encounter
        .map(|(id, _)| id.to_owned())
        .unwrap_or_else(|| patient.id.clone());
    let key = match &ident {
        Some(i) => format!("id|{}", i.key()),
        None => format!("{scope}|{}", concept_key(&code)),
    };
    let id = ctx.id("Condition", &key);
    if field_text(dg1, 21)
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
        == Some("D")
    {
        ctx.delete("Condition", &id);
        return None;
    }
    let onset = ctx.datetime(
        dg1.field(5).component(1).raw(),
        floc(dg1, 5, 1).with_comp(1),
    );
    let recorded = ctx.datetime(
        dg1.field(19).component(1).raw(),
        floc(dg1, 19, 1).with_comp(1),
    );
    let asserter = dg1
        .field(16)
        .repetitions()
        .next()
        .and_then(|r| practitioner(ctx, &r, &floc(dg1, 16, 1)));
    let res = obj! {
        "resourceType": "Condition",
        "id": &id,
        "identifier": ident.map(|i| vec![i.json]),
        "category": vec![
            obj! {
                "coding": vec![
                    obj! {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                        "code": "encounter-diagnosis",
                        "display": "Encounter Diagnosis",
                    },
                ],
            },
        ],
        "code": code,
        "subject": &patient.reference,
        "encounter": encounter.map(|(_, r)| r.clone()),
        "onsetDateTime": onset,
        "recordedDate": recorded,
        "asserter": asserter,
    };
    let reference = ctx.add("Condition", &id, res)?;
    let rank = field_text(dg1, 15)
        .and_then(|r| r.parse::<u32>().ok())
        .filter(|&r| r > 0);
    let use_ = diagnosis_use(
        field_text(dg1, 6)
            .map(|s| s.to_ascii_uppercase())
            .as_deref(),
    );
    Some(obj! {"condition": reference, "use": use_, "rank": rank})
}

/// PR1 → Procedure.
pub(crate) fn procedure(
    ctx: &mut Ctx<'_, '_>,
    pr1: &Segment<'_, '_>,
    patient: &PatientRef,
    encounter: Option<(&str, &Value)>,
) -> Option<Value> {
    let code = pr1
        .field(3)
        .repetitions()
        .next()
        .and_then(|r| cwe(ctx, &r))
        .or_else(|| field_text(pr1, 4).map(|t| obj! {"text": t}));
    let Some(code) = code else {
        ctx.warn(
            101,
            Some(floc(pr1, 3, 1)),
            "PR1-3 (procedure code) and PR1-4 are empty: no Procedure",
        );
        return None;
    };
    let performed = ctx.datetime(
        pr1.field(5).component(1).raw(),
        floc(pr1, 5, 1).with_comp(1),
    );
    let ident_default = format!("urn:carebridge:{}:procedure", pct(&ctx.cfg.institution_id));
    let ident = pr1
        .field(19)
        .repetitions()
        .next()
        .and_then(|r| ei(ctx, &r, &ident_default));
    let scope = encounter
        .map(|(id, _)| id.to_owned())
        .unwrap_or_else(|| patient.id.clone());
    let key = match &ident {
        Some(i) => format!("id|{}", i.key()),
        None => format!(
            "{scope}|{}|{}",
            concept_key(&code),
            performed.as_deref().unwrap_or("")
        ),
    };
    let id = ctx.id("Procedure", &key);
    let category = pr1
        .field(6)
        .repetitions()
        .next()
        .and_then(|r| cwe_table(ctx, &r, "0230"));
    let mut performers = Vec::new();
    for (field, function) in [
        (8usize, "anesthesiologist"),
        (11, "surgeon"),
        (12, "procedure practitioner"),
    ] {
        for (n, r) in reps(pr1, field) {
            if let Some(who) = practitioner(ctx, &r, &floc(pr1, field, n)) {
                performers.push(obj! {"function": obj! {"text": function}, "actor": who});
            }
        }
    }
    let reason: Vec<Value> = pr1
        .field(15)
        .repetitions()
        .next()
        .and_then(|r| cwe(ctx, &r))
        .into_iter()
        .collect();
    let res = obj! {
        "resourceType": "Procedure",
        "id": &id,
        "identifier": ident.map(|i| vec![i.json]),
        "status": "completed",
        "category": category,
        "code": code,
        "subject": &patient.reference,
        "encounter": encounter.map(|(_, r)| r.clone()),
        "performedDateTime": performed,
        "performer": performers,
        "reasonCode": reason,
    };
    ctx.add("Procedure", &id, res)
}

/// AL1 → AllergyIntolerance.
pub(crate) fn allergy(
    ctx: &mut Ctx<'_, '_>,
    al1: &Segment<'_, '_>,
    patient: &PatientRef,
) -> Option<Value> {
    let code = al1.field(3).repetitions().next().and_then(|r| cwe(ctx, &r));
    let Some(code) = code else {
        ctx.warn(
            101,
            Some(floc(al1, 3, 1)),
            "AL1-3 (allergen) is empty: no AllergyIntolerance",
        );
        return None;
    };
    let id = ctx.id(
        "AllergyIntolerance",
        &format!("{}|{}", patient.id, concept_key(&code)),
    );
    let kind = field_text(al1, 2).map(|s| s.to_ascii_uppercase());
    let category = match kind.as_deref() {
        Some("DA") => Some("medication"),
        Some("FA") => Some("food"),
        Some("EA") | Some("AA") | Some("PA") | Some("LA") => Some("environment"),
        _ => None,
    };
    let allergy_type = match kind.as_deref() {
        Some("DA" | "FA" | "MA" | "EA" | "AA" | "PA" | "LA") => Some("allergy"),
        _ => None,
    };
    let severity_code = field_text(al1, 4).map(|s| s.to_ascii_uppercase());
    let severity = match severity_code.as_deref() {
        Some("SV") => Some("severe"),
        Some("MO") => Some("moderate"),
        Some("MI") => Some("mild"),
        _ => None,
    };
    let reactions: Vec<Value> = reps(al1, 5)
        .into_iter()
        .filter_map(|(_, r)| super::types::rep_text(r))
        .map(|t| obj! {"text": t})
        .collect();
    let (reaction, criticality) = if reactions.is_empty() {
        let crit = match severity_code.as_deref() {
            Some("SV") => Some("high"),
            Some("MO") | Some("MI") => Some("low"),
            Some("U") => Some("unable-to-assess"),
            _ => None,
        };
        (None, crit)
    } else {
        (
            Some(vec![
                obj! {"manifestation": reactions, "severity": severity},
            ]),
            None,
        )
    };
    let onset = ctx.datetime(
        al1.field(6).component(1).raw(),
        floc(al1, 6, 1).with_comp(1),
    );
    let res = obj! {
        "resourceType": "AllergyIntolerance",
        "id": &id,
        "clinicalStatus": obj! {
            "coding": vec![
                obj! {
                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                    "code": "active",
                    "display": "Active",
                },
            ],
        },
        "type": allergy_type,
        "category": category.map(|c| vec![c]),
        "criticality": criticality,
        "code": code,
        "patient": &patient.reference,
        "onsetDateTime": onset,
        "reaction": reaction,
    };
    ctx.add("AllergyIntolerance", &id, res)
}

const DE_COVERAGE_TYPES: &[&str] = &["GKV", "PKV", "BG", "SEL", "SOZ", "GPV", "PPV", "BEI"];

/// IN1 → Coverage (+ insurer Organization).
pub(crate) fn coverage(
    ctx: &mut Ctx<'_, '_>,
    in1: &Segment<'_, '_>,
    patient: &PatientRef,
) -> Option<Value> {
    // Insurer
    let insurer_default = format!("urn:carebridge:{}:insurer", pct(&ctx.cfg.institution_id));
    let insurer_ident = in1
        .field(3)
        .repetitions()
        .next()
        .and_then(|r| cx(ctx, &r, &floc(in1, 3, 1), &insurer_default));
    let insurer_name = in1.field(4).repetitions().find_map(|r| r.part(1));
    let insurer_key = match (&insurer_ident, &insurer_name) {
        (Some(i), _) => Some(i.key()),
        (None, Some(n)) => Some(format!("name|{n}")),
        (None, None) => None,
    };
    let payor = match &insurer_key {
        Some(k) => {
            let oid = ctx.id("Organization", &format!("insurer|{k}"));
            let mut addresses = Vec::new();
            for (n, r) in reps(in1, 5) {
                if let Some(a) = address(ctx, &r, &floc(in1, 5, n)) {
                    addresses.push(a);
                }
            }
            let telecom: Vec<Value> = reps(in1, 7)
                .into_iter()
                .filter_map(|(_, r)| contact_point(&r, Some("work")))
                .collect();
            let org = obj! {
                "resourceType": "Organization",
                "id": &oid,
                "identifier": insurer_ident.as_ref().map(|i| vec![i.json.clone()]),
                "active": true,
                "type": vec![
                    obj! {
                        "coding": vec![
                            obj! {
                                "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                                "code": "ins",
                                "display": "Insurance Company",
                            },
                        ],
                    },
                ],
                "name": insurer_name,
                "telecom": telecom,
                "address": addresses,
            };
            ctx.add("Organization", &oid, org)
        }
        None => None,
    }
    .unwrap_or_else(|| patient.reference.clone());

    let plan = super::types::comp(in1.field(2).component(1));
    let plan_name = in1.field(2).repetitions().next().and_then(|r| r.part(2));
    let policy = field_text(in1, 36);
    let key = format!(
        "{}|{}|{}|{}",
        patient.id,
        insurer_key.as_deref().unwrap_or("self"),
        plan.as_deref().unwrap_or(""),
        policy.as_deref().unwrap_or("")
    );
    let id = ctx.id("Coverage", &key);

    let type_ = in1.field(15).repetitions().next().and_then(|r| {
        let code = r.part(1)?;
        let up = code.to_ascii_uppercase();
        if r.part(3).is_none() && DE_COVERAGE_TYPES.contains(&up.as_str()) {
            Some(obj! {
                "coding": vec![
                    obj! {
                        "system": "http://fhir.de/CodeSystem/versicherungsart-de-basis",
                        "code": up,
                    },
                ],
            })
        } else {
            cwe_table(ctx, &r, "0086")
        }
    });
    let relationship = field_text(in1, 17).and_then(|r| {
        let c = match r.to_ascii_uppercase().as_str() {
            "SEL" | "01" => "self",
            "SPO" | "DOM" | "02" => "spouse",
            "CHD" | "DEP" | "FCH" | "SCH" | "03" => "child",
            "PAR" | "MTH" | "FTH" => "parent",
            "EME" | "OTH" | "GRP" | "GRD" => "other",
            _ => return None,
        };
        Some(obj! {
            "coding": vec![
                obj! {
                    "system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship",
                    "code": c,
                },
            ],
        })
    });
    let start = ctx.date(in1.field(12).component(1).raw(), floc(in1, 12, 1));
    let end = ctx.date(in1.field(13).component(1).raw(), floc(in1, 13, 1));
    let subscriber_id = in1
        .field(49)
        .repetitions()
        .find_map(|r| r.part(1))
        .or_else(|| policy.clone());
    let mut classes = Vec::new();
    if let Some(p) = &plan {
        classes.push(obj! {
            "type": obj! {
                "coding": vec![
                    obj! {
                        "system": "http://terminology.hl7.org/CodeSystem/coverage-class",
                        "code": "plan",
                    },
                ],
            },
            "value": p,
            "name": plan_name,
        });
    }
    if let Some(g) = field_text(in1, 8) {
        classes.push(obj! {
            "type": obj! {
                "coding": vec![
                    obj! {
                        "system": "http://terminology.hl7.org/CodeSystem/coverage-class",
                        "code": "group",
                    },
                ],
            },
            "value": g,
            "name": in1.field(9).repetitions().find_map(|r| r.part(1)),
        });
    }
    // A GKV policy number that is a valid KVNR is the KVNR.
    let is_gkv = type_
        .as_ref()
        .and_then(|t| t.pointer("/coding/0/code"))
        .and_then(Value::as_str)
        == Some("GKV");
    let policy_system = match &policy {
        Some(p) if is_gkv && super::types::kvnr_valid(p) => super::types::KVNR_SYSTEM.to_owned(),
        _ => format!("urn:carebridge:{}:policy", pct(&ctx.cfg.institution_id)),
    };
    let res = obj! {
        "resourceType": "Coverage",
        "id": &id,
        "identifier": policy.map(|p| vec![obj!{"system": policy_system, "value": p}]),
        "status": "active",
        "type": type_,
        "subscriberId": subscriber_id,
        "beneficiary": &patient.reference,
        "relationship": relationship,
        "period": obj! {"start": start, "end": end},
        "payor": vec![payor],
        "class": classes,
    };
    ctx.add("Coverage", &id, res)
}
