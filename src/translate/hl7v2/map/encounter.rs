//! PV1 + PV2 → Encounter (v2-to-FHIR IG segment maps PV1[Encounter],
//! PV2[Encounter]; HL7 v2.5.1 ch. 3.4.3 PV1, 3.4.4 PV2; trigger → status
//! after the IG's "table HL70003 to Encounter status" map).
//!
//! # Status by trigger
//! | trigger | status | notes |
//! |---|---|---|
//! | A01 admit | in-progress | period.start = PV1-44, else EVN-6 |
//! | A04 register | in-progress | the patient has arrived (ch. 3.3.4); the IG table says `planned`, but an A04 reports a visit that has begun |
//! | A05 pre-admit | planned | period = PV2-8 … PV2-9 (expected admit/discharge) unless PV1-44/45 are given |
//! | A02 transfer | in-progress | PV1-3 is the new location (`active`), PV1-6 the prior one (`completed`) |
//! | A03 discharge | finished | period.end = PV1-45, else EVN-6 |
//! | A11 cancel admit | cancelled | IG table; `entered-in-error` would claim the visit never existed, which a cancel does not say |
//! | A13 cancel discharge | in-progress | period.end removed |
//! | A08, A28, A31 updates | from the data | PV1-45 valued → finished; else PV1-2 = `P` (preadmit) → planned; else PV1-44 valued → in-progress; else unknown (IG: PV1-45, then PV1-2 via PatientClass→EncounterStatus) |
//!
//! # Business key (Encounter id)
//! PV1-19 visit number (value only, the institution is already part of the
//! id), else patient id + PV1-44 admit time; else, for the visit events
//! (A01–A13), the message control id with a warning — such an Encounter
//! cannot be matched by a later message. A28/A31/A08 without a key, or
//! with PV1-2 = `N` (not applicable), produce no Encounter.
//!
//! # Other elements
//! class PV1-2 (E→EMER, I→IMP, O→AMB, P→PRENC, R→AMB, B→IMP; others as
//! v2-0004 codes; empty → v3-NullFlavor UNK since class is mandatory);
//! type PV1-4 (0007) and PV1-18 (0018); serviceType PV1-10 (0069);
//! participant PV1-7 ATND, PV1-8 REF, PV1-9 CON, PV1-17 ADM;
//! reasonCode PV2-3; hospitalization: preAdmissionIdentifier PV1-5,
//! reAdmission PV1-13, admitSource PV1-14, specialCourtesy PV1-16,
//! dischargeDisposition PV1-36, dietPreference PV1-38; location PV1-3
//! (ward/room/bed hierarchy, see `types::location`); diagnosis from DG1
//! (use from DG1-6: A→AD, F→DD; rank DG1-15); serviceProvider = the
//! institution.

use serde_json::Value;

use super::json::obj;

use super::ctx::Ctx;
use super::patient::PatientRef;
use super::types::{cwe_table, cx, field_text, floc, location, pct, practitioner, reps, Ident};
use crate::translate::hl7v2::Segment;

/// The Encounter's id and what its key was made from.
pub(crate) struct EncounterPlan {
    pub id: String,
    pub visit: Option<Ident>,
    pub admit: Option<String>,
}

impl EncounterPlan {
    pub fn reference(&self) -> Value {
        obj! {"reference": format!("Encounter/{}", self.id)}
    }
}

/// True for the events about a visit (an Encounter is expected).
pub(crate) fn is_visit_event(trigger: &str) -> bool {
    matches!(
        trigger,
        "A01" | "A02" | "A03" | "A04" | "A05" | "A11" | "A13"
    )
}

/// Works out the Encounter id for `pv1` (see the module doc).
pub(crate) fn plan(
    ctx: &mut Ctx<'_, '_>,
    pv1: &Segment<'_, '_>,
    patient: &PatientRef,
) -> Option<EncounterPlan> {
    let class = field_text(pv1, 2).map(|c| c.to_ascii_uppercase());
    let visit_event = is_visit_event(&ctx.trigger);
    if class.as_deref() == Some("N") && !visit_event {
        return None;
    }
    let default = format!("urn:carebridge:{}:visit", pct(&ctx.cfg.institution_id));
    let visit = pv1
        .field(19)
        .repetitions()
        .next()
        .and_then(|r| cx(ctx, &r, &floc(pv1, 19, 1), &default));
    let admit = ctx.datetime(
        pv1.field(44).component(1).raw(),
        floc(pv1, 44, 1).with_comp(1),
    );
    let key = match (&visit, &admit) {
        (Some(v), _) => format!("visit|{}", v.value),
        (None, Some(a)) => format!("admit|{}|{a}", patient.id),
        (None, None) if visit_event => {
            ctx.warn(
                101,
                Some(floc(pv1, 19, 1)),
                "neither PV1-19 (visit number) nor PV1-44 (admit time): the Encounter is keyed on this message only and later messages cannot update it",
            );
            format!("message|{}", ctx.control_id)
        }
        (None, None) => return None,
    };
    Some(EncounterPlan {
        id: ctx.id("Encounter", &key),
        visit,
        admit,
    })
}

fn status_from_data(pv1: &Segment<'_, '_>, has_admit: bool) -> &'static str {
    if field_text(pv1, 45).is_some() {
        "finished"
    } else if field_text(pv1, 2).as_deref() == Some("P") {
        "planned"
    } else if has_admit {
        "in-progress"
    } else {
        "unknown"
    }
}

fn class_coding(code: Option<&str>) -> Value {
    let v3 = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
    let (system, code, display) = match code {
        Some("E") => (v3, "EMER", "emergency"),
        Some("I") | Some("B") => (v3, "IMP", "inpatient encounter"),
        Some("O") | Some("R") => (v3, "AMB", "ambulatory"),
        Some("P") => (v3, "PRENC", "pre-admission"),
        Some(other) => {
            return obj! {
                "system": "http://terminology.hl7.org/CodeSystem/v2-0004",
                "code": other,
            }
        }
        None => (
            "http://terminology.hl7.org/CodeSystem/v3-NullFlavor",
            "UNK",
            "unknown",
        ),
    };
    obj! {"system": system, "code": code, "display": display}
}

/// True if `a` is after `b` (both FHIR dateTimes with a time); `false`
/// when they cannot be compared.
fn after(a: &str, b: &str) -> bool {
    match (a.parse::<jiff::Timestamp>(), b.parse::<jiff::Timestamp>()) {
        (Ok(x), Ok(y)) => x > y,
        _ => false,
    }
}

/// Builds and adds the Encounter.
pub(crate) fn encounter(
    ctx: &mut Ctx<'_, '_>,
    plan: &EncounterPlan,
    pv1: &Segment<'_, '_>,
    pv2: Option<&Segment<'_, '_>>,
    evn: Option<&Segment<'_, '_>>,
    patient: &PatientRef,
    diagnoses: Vec<Value>,
) -> Option<Value> {
    let trigger = ctx.trigger.clone();
    let status = match trigger.as_str() {
        "A01" | "A02" | "A04" | "A13" => "in-progress",
        "A05" => "planned",
        "A03" => "finished",
        "A11" => "cancelled",
        _ => status_from_data(pv1, plan.admit.is_some()),
    };
    let evn_time = |ctx: &mut Ctx<'_, '_>| {
        evn.and_then(|e| ctx.datetime(e.field(6).component(1).raw(), floc(e, 6, 1).with_comp(1)))
    };
    let mut start = plan.admit.clone();
    if start.is_none() && matches!(trigger.as_str(), "A01" | "A04") {
        start = evn_time(ctx);
    }
    let mut end = ctx.datetime(
        pv1.field(45).component(1).raw(),
        floc(pv1, 45, 1).with_comp(1),
    );
    if end.is_none() && trigger == "A03" {
        end = evn_time(ctx);
    }
    if trigger == "A13" {
        end = None;
    }
    // A planned encounter's period is the planned one: PV2-8 expected admit,
    // PV2-9 expected discharge (R5 maps them to plannedStart/EndDate).
    if status == "planned" {
        if let Some(p) = pv2 {
            if start.is_none() {
                start = ctx.datetime(p.field(8).component(1).raw(), floc(p, 8, 1).with_comp(1));
            }
            if end.is_none() {
                end = ctx.datetime(p.field(9).component(1).raw(), floc(p, 9, 1).with_comp(1));
            }
        }
    }
    if let (Some(s), Some(e)) = (&start, &end) {
        if after(s, e) {
            ctx.warn(
                102,
                Some(floc(pv1, 45, 1)),
                format!("discharge time {e} is before admit time {s}; period.end left out"),
            );
            end = None;
        }
    }

    let class = field_text(pv1, 2).map(|c| c.to_ascii_uppercase());
    let mut types = Vec::new();
    for (field, table) in [(4usize, "0007"), (18, "0018")] {
        if let Some(r) = pv1.field(field).repetitions().next() {
            if let Some(c) = cwe_table(ctx, &r, table) {
                types.push(c);
            }
        }
    }
    let service_type = pv1
        .field(10)
        .repetitions()
        .next()
        .and_then(|r| cwe_table(ctx, &r, "0069"));

    let mut participants = Vec::new();
    for (field, code, display) in [
        (7usize, "ATND", "attender"),
        (8, "REF", "referrer"),
        (9, "CON", "consultant"),
        (17, "ADM", "admitter"),
    ] {
        for (n, r) in reps(pv1, field) {
            if let Some(who) = practitioner(ctx, &r, &floc(pv1, field, n)) {
                participants.push(obj! {
                    "type": vec![
                        obj! {
                            "coding": vec![
                                obj! {
                                    "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                    "code": code,
                                    "display": display,
                                },
                            ],
                        },
                    ],
                    "individual": who,
                });
            }
        }
    }

    let loc_status = match status {
        "in-progress" => Some("active"),
        "planned" => Some("planned"),
        "finished" => Some("completed"),
        _ => None,
    };
    let mut locations = Vec::new();
    if let Some(r) = pv1.field(3).repetitions().next() {
        if let Some(l) = location(ctx, &r) {
            locations.push(obj! {"location": l, "status": loc_status});
        }
    }
    if trigger == "A02" {
        if let Some(r) = pv1.field(6).repetitions().next() {
            if let Some(l) = location(ctx, &r) {
                if !locations.iter().any(|x| x["location"] == l) {
                    locations.push(obj! {"location": l, "status": "completed"});
                }
            }
        }
    }

    let reason: Vec<Value> = pv2
        .and_then(|p| p.field(3).repetitions().next())
        .and_then(|r| super::types::cwe(ctx, &r))
        .into_iter()
        .collect();

    let preadmit_default = format!("urn:carebridge:{}:preadmit", pct(&ctx.cfg.institution_id));
    let preadmit = pv1
        .field(5)
        .repetitions()
        .next()
        .and_then(|r| cx(ctx, &r, &floc(pv1, 5, 1), &preadmit_default))
        .map(|i| i.json);
    let first_concept = |ctx: &Ctx<'_, '_>, field: usize, table: &str| {
        pv1.field(field)
            .repetitions()
            .next()
            .and_then(|r| cwe_table(ctx, &r, table))
    };
    let readmission = first_concept(ctx, 13, "0092");
    let admit_source = first_concept(ctx, 14, "0023");
    let discharge = first_concept(ctx, 36, "0112");
    let courtesy: Vec<Value> = reps(pv1, 16)
        .into_iter()
        .filter_map(|(_, r)| cwe_table(ctx, &r, "0099"))
        .collect();
    let diet: Vec<Value> = reps(pv1, 38)
        .into_iter()
        .filter_map(|(_, r)| cwe_table(ctx, &r, "0114"))
        .collect();

    let mut identifier = Vec::new();
    if let Some(v) = &plan.visit {
        let mut j = v.json.clone();
        if j.get("type").is_none() {
            j["type"] = obj! {
                "coding": vec![
                    obj! {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "VN"},
                ],
            };
        }
        identifier.push(j);
    }

    let res = obj! {
        "resourceType": "Encounter",
        "id": &plan.id,
        "identifier": identifier,
        "status": status,
        "class": class_coding(class.as_deref()),
        "type": types,
        "serviceType": service_type,
        "subject": &patient.reference,
        "participant": participants,
        "period": obj! {"start": start, "end": end},
        "reasonCode": reason,
        "diagnosis": diagnoses,
        "hospitalization": obj! {
            "preAdmissionIdentifier": preadmit,
            "admitSource": admit_source,
            "reAdmission": readmission,
            "dietPreference": diet,
            "specialCourtesy": courtesy,
            "dischargeDisposition": discharge,
        },
        "location": locations,
        "serviceProvider": ctx.org_reference(),
    };
    ctx.add("Encounter", &plan.id, res)
}

/// DG1-6 (table 0052) → diagnosis-role code.
pub(crate) fn diagnosis_use(code: Option<&str>) -> Option<Value> {
    let (c, d) = match code? {
        "A" => ("AD", "Admission diagnosis"),
        "F" => ("DD", "Discharge diagnosis"),
        _ => return None,
    };
    Some(obj! {
        "coding": vec![
            obj! {
                "system": "http://terminology.hl7.org/CodeSystem/diagnosis-role",
                "code": c,
                "display": d,
            },
        ],
    })
}
