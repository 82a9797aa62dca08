//! VXU^V04 (unsolicited vaccination record update) → Immunization (HL7
//! v2.5.1 ch. 4A.3.x RXA, RXR, ch. 4.5.1 ORC; message structure VXU_V04;
//! v2-to-FHIR IG 1.0.0 message map VXU_V04 and segment maps RXA[Immunization],
//! RXR[Immunization], ORC[Immunization], OBX[Immunization]; FHIR R4
//! `immunization.html`; the CDC Implementation Guide for Immunization
//! Messaging 2.5.1 for the OBX codes after RXA).
//!
//! # Segments
//! PID (+PD1) → Patient, PID-21 → mother, NK1 → RelatedPerson, PV1 (+PV2)
//! → Encounter (only with a visit number or admit time: a vaccination
//! report is not a visit event), IN1 → Coverage, OBX before the first
//! ORC/RXA → patient Observations (as in ADT). Each ORDER group (ORC,
//! RXA, RXR, OBX, NTE) → one **Immunization**. A VXU without an ORDER group
//! (demographics only) is valid; PID is required (error 100).
//!
//! # Immunization (RXA, RXR, ORC)
//! * id key: `filler|`ORC-3 `system|value`, else `placer|`ORC-2, else
//!   `rxa|`patient id`|`RXA-3 (as FHIR dateTime)`|`RXA-5 system`|`code — so
//!   a corrected re-send of the same administration updates it.
//! * identifier: ORC-2 (type PLAC), ORC-3 (type FILL).
//! * status: RXA-21 action code `D` → `entered-in-error` (the IG map; the
//!   record stays, marked, rather than a DELETE that would erase the
//!   audit trail); otherwise RXA-20 completion status (table 0322): `CP` →
//!   `completed`, `PA` (partially administered) → `completed` with
//!   `isSubpotent: true`, `RE` (refused) / `NA` (not administered) →
//!   `not-done`; empty → `completed`.
//! * statusReason RXA-18 (refusal reason); reasonCode RXA-19 (indication).
//! * vaccineCode RXA-5 (CWE; `CVX` → `http://hl7.org/fhir/sid/cvx`, `NDC`,
//!   `PZN`, `ATC`, … by the coding-system map in `types.rs`). **Required**:
//!   empty → error 101 at RXA-5.
//! * occurrenceDateTime RXA-3 (**required**: empty → error 101 at RXA-3);
//!   recorded RXA-22 (system entry time).
//! * doseQuantity RXA-6 amount + RXA-7 units (UCUM coded → system/code,
//!   else unit text); the CDC "unknown amount" `999` is left out.
//! * primarySource / reportOrigin RXA-9 (NIP001): `00` (new record) →
//!   `primarySource: true`; any other code → `primarySource: false` and the
//!   code as `reportOrigin`.
//! * performer: ORC-12 ordering provider (function `OP`, table 0443) and
//!   RXA-10 administering provider (function `AP`) as Practitioners.
//! * location: RXA-27 (PL, v2.6+), else RXA-11 (LA2; its first four
//!   components are laid out like PL); a facility without a point of care
//!   becomes one Location of that name.
//! * lotNumber RXA-15 (first), expirationDate RXA-16, manufacturer RXA-17
//!   (MVX → an Organization with identifier system
//!   `http://hl7.org/fhir/sid/mvx`, key `manufacturer|system|code`).
//! * route RXR-1 (table 0162), site RXR-2 (table 0163).
//! * note: NTEs directly after RXA (not in the v2.5.1 structure, but sent;
//!   an NTE after an OBX is that Observation's note).
//!
//! # OBX after RXA
//! Every OBX becomes an Observation (`partOf` the Immunization, effective
//! defaults to RXA-3; key: Immunization id + `|obx|` + OBX-1, `#n` for a
//! repeated set id) **and**, for the CDC codes, also fills the Immunization:
//! `64994-7` → programEligibility, `30963-3` → fundingSource (coded
//! values only); the VIS
//! group (by OBX-4 sub-id) `69764-9` (document type, GS1 barcode) or
//! `30956-7` (vaccine type) → education.documentType, `29768-9` →
//! education.publicationDate, `29769-7` → education.presentationDate (when
//! OBX-2 is a date type; a code sent under the wrong type only becomes its
//! Observation); an
//! education entry without a document type is dropped: imm-1).

use serde_json::{Map, Value};

use super::clinical;
use super::ctx::Ctx;
use super::encounter;
use super::json::{j, obj};
use super::patient::{self, PatientRef};
use super::results::{adt_observation, observation, order_identifier, ObsScope, ObxOut};
use super::types::{
    code_system, cwe, cwe_table, field_text, floc, location, normalize_number, notes_after,
    number, pct, practitioner, reps, Ident, Parts, UCUM,
};
use crate::translate::hl7v2::Segment;

/// One ORDER group: indexes of its segments.
struct Group {
    orc: Option<usize>,
    rxa: usize,
    rxr: Option<usize>,
    obx: Vec<usize>,
}

pub(crate) fn vxu(ctx: &mut Ctx<'_, '_>) {
    let msg = ctx.msg;
    let segs: Vec<Segment<'_, '_>> = msg.segments().collect();
    let Some(pid_i) = ctx.require(&segs, "PID", "PID segment missing") else {
        return;
    };
    let pid = segs[pid_i];
    let pd1 = segs.iter().find(|s| s.id() == "PD1");
    let Some(patient) = patient::patient(ctx, &pid, pd1) else {
        return;
    };
    patient::mother(ctx, &pid, &patient);
    for nk1 in segs.iter().filter(|s| s.id() == "NK1") {
        patient::related_person(ctx, nk1, &patient);
    }
    let pv1 = segs.iter().find(|s| s.id() == "PV1");
    let pv2 = segs.iter().find(|s| s.id() == "PV2");
    let mut enc_ref = None;
    if let Some(pv1) = pv1 {
        if let Some(plan) = encounter::plan(ctx, pv1, &patient) {
            enc_ref = encounter::encounter(ctx, &plan, pv1, pv2, None, &patient, Vec::new());
        }
    }
    for in1 in segs.iter().filter(|s| s.id() == "IN1") {
        clinical::coverage(ctx, in1, &patient);
    }

    // ORDER groups
    let mut groups: Vec<Group> = Vec::new();
    let mut orc: Option<usize> = None;
    let mut in_order = false;
    let patient_scope = ObsScope {
        patient: patient.clone(),
        encounter: enc_ref.clone(),
        based_on: None,
        default_effective: None,
        category: None,
    };
    for (i, seg) in segs.iter().enumerate() {
        match seg.id() {
            "ORC" => {
                orc = Some(i);
                in_order = true;
            }
            "RXA" => {
                groups.push(Group {
                    orc: orc.take(),
                    rxa: i,
                    rxr: None,
                    obx: Vec::new(),
                });
                in_order = true;
            }
            "RXR" => {
                if let Some(g) = groups.last_mut() {
                    g.rxr.get_or_insert(i);
                }
            }
            "OBX" => match groups.last_mut() {
                Some(g) if in_order => g.obx.push(i),
                _ => {
                    adt_observation(ctx, seg, i, &patient_scope);
                }
            },
            _ => {}
        }
    }
    for g in &groups {
        immunization(ctx, &segs, g, &patient, enc_ref.as_ref());
    }
}

fn typed(ident: &Ident, code: &str) -> Value {
    let mut j = ident.json.clone();
    if let Value::Object(m) = &mut j {
        m.insert(
            "type".into(),
            obj! {
                "coding": vec![
                    obj! {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": code},
                ],
            },
        );
    }
    j
}

fn performer(function: &str, display: &str, actor: Value) -> Value {
    obj! {
        "function": obj! {
            "coding": vec![
                obj! {
                    "system": "http://terminology.hl7.org/CodeSystem/v2-0443",
                    "code": function,
                    "display": display,
                },
            ],
        },
        "actor": actor,
    }
}

/// RXA-6/RXA-7 → doseQuantity.
fn dose(ctx: &Ctx<'_, '_>, rxa: &Segment<'_, '_>) -> Option<Value> {
    let amount = field_text(rxa, 6)?;
    let n = normalize_number(&amount)?;
    if n == "999" {
        return None;
    }
    let value = number(&n)?;
    let u = rxa.field(7).repetition(1);
    let code = u.part(1);
    let text = u.part(2).or_else(|| code.clone());
    let ucum = u.part(3).is_some_and(|s| code_system(ctx, &s) == UCUM);
    Some(if ucum {
        obj! {"value": value, "unit": text, "system": UCUM, "code": code}
    } else {
        obj! {"value": value, "unit": text}
    })
}

/// RXA-17 → the manufacturer Organization.
fn manufacturer(ctx: &mut Ctx<'_, '_>, rxa: &Segment<'_, '_>) -> Option<Value> {
    let r = rxa.field(17).repetition(1);
    if r.is_blank() {
        return None;
    }
    let code = r.part(1);
    let name = r.part(2);
    let system = r.part(3).map(|s| {
        if s.eq_ignore_ascii_case("MVX") {
            "http://hl7.org/fhir/sid/mvx".to_owned()
        } else {
            code_system(ctx, &s)
        }
    });
    let key = match (&code, &name) {
        (Some(c), _) => format!("manufacturer|{}|{c}", system.as_deref().unwrap_or("")),
        (None, Some(n)) => format!("manufacturer|name|{n}"),
        (None, None) => return None,
    };
    let id = ctx.id("Organization", &key);
    let res = obj! {
        "resourceType": "Organization",
        "id": &id,
        "identifier": code.map(|c| vec![obj! {"system": system, "value": c}]),
        "name": name,
    };
    ctx.add("Organization", &id, res)
}

/// RXA-27 (PL) or RXA-11 (LA2) → Location reference.
fn administered_at(ctx: &mut Ctx<'_, '_>, rxa: &Segment<'_, '_>) -> Option<Value> {
    for f in [27usize, 11] {
        let r = rxa.field(f).repetition(1);
        if r.is_blank() {
            continue;
        }
        if let Some(l) = location(ctx, &r) {
            return Some(l);
        }
        let facility = r.component(4);
        let name = facility.part(1).or_else(|| facility.part(2))?;
        let id = ctx.id("Location", &name);
        let res = obj! {
            "resourceType": "Location",
            "id": &id,
            "identifier": vec![
                obj! {
                    "system": format!("urn:carebridge:{}:location", pct(&ctx.cfg.institution_id)),
                    "value": &name,
                },
            ],
            "status": "active",
            "name": &name,
            "mode": "instance",
            "managingOrganization": ctx.org_reference(),
        };
        return ctx.add("Location", &id, res);
    }
    None
}

#[derive(Default)]
struct Education {
    sub_id: String,
    document_type: Option<String>,
    publication: Option<String>,
    presentation: Option<String>,
}

/// The VIS education entry of the OBX's sub-id group (OBX-4).
fn education_item<'e>(
    education: &'e mut Vec<Education>,
    obx: &Segment<'_, '_>,
) -> &'e mut Education {
    let sub = field_text(obx, 4).unwrap_or_default();
    let k = match education.iter().position(|e| e.sub_id == sub) {
        Some(k) => k,
        None => {
            education.push(Education {
                sub_id: sub,
                ..Education::default()
            });
            education.len() - 1
        }
    };
    &mut education[k]
}

fn immunization(
    ctx: &mut Ctx<'_, '_>,
    segs: &[Segment<'_, '_>],
    g: &Group,
    patient: &PatientRef,
    enc_ref: Option<&Value>,
) {
    let rxa = segs[g.rxa];
    let orc = g.orc.map(|i| segs[i]);
    let vaccine = rxa.field(5).repetitions().next().and_then(|r| cwe(ctx, &r));
    if vaccine.is_none() {
        ctx.error(
            101,
            Some(floc(&rxa, 5, 1)),
            "RXA-5 (administered code) is empty: the vaccine is unknown",
        );
    }
    let occ_raw = rxa.field(3).component(1).raw();
    let occurrence = ctx.datetime(occ_raw, floc(&rxa, 3, 1).with_comp(1));
    if occ_raw.trim().is_empty() {
        ctx.error(
            101,
            Some(floc(&rxa, 3, 1)),
            "RXA-3 (date/time start of administration) is empty",
        );
    }
    let (Some(vaccine), Some(occurrence)) = (vaccine, occurrence) else {
        return;
    };
    let placer = orc.as_ref().and_then(|o| order_identifier(ctx, o, 2, "placer"));
    let filler = orc.as_ref().and_then(|o| order_identifier(ctx, o, 3, "filler"));
    let key = match (&filler, &placer) {
        (Some(f), _) => format!("filler|{}", f.key()),
        (None, Some(p)) => format!("placer|{}", p.key()),
        (None, None) => {
            let c = &vaccine["coding"][0];
            format!(
                "rxa|{}|{occurrence}|{}|{}",
                patient.id,
                c["system"].as_str().unwrap_or(""),
                c["code"]
                    .as_str()
                    .or(vaccine["text"].as_str())
                    .unwrap_or("")
            )
        }
    };
    let id = ctx.id("Immunization", &key);
    let imm_ref = obj! {"reference": format!("Immunization/{id}")};
    let mut identifiers = Vec::new();
    if let Some(p) = &placer {
        identifiers.push(typed(p, "PLAC"));
    }
    if let Some(f) = &filler {
        identifiers.push(typed(f, "FILL"));
    }

    let completion = field_text(&rxa, 20).map(|s| s.to_ascii_uppercase());
    let action = field_text(&rxa, 21).map(|s| s.to_ascii_uppercase());
    let status = if action.as_deref() == Some("D") {
        "entered-in-error"
    } else {
        match completion.as_deref() {
            Some("RE") | Some("NA") => "not-done",
            _ => "completed",
        }
    };
    let subpotent = (completion.as_deref() == Some("PA")).then_some(true);
    let status_reason = rxa
        .field(18)
        .repetitions()
        .next()
        .and_then(|r| cwe(ctx, &r));
    let reasons: Vec<Value> = reps(&rxa, 19)
        .into_iter()
        .filter_map(|(_, r)| cwe(ctx, &r))
        .collect();
    let (primary, origin) = match rxa.field(9).repetitions().next() {
        Some(r) if !r.is_blank() => match r.part(1).as_deref() {
            Some("00") => (Some(true), None),
            Some(_) => (Some(false), cwe(ctx, &r)),
            None => (None, None),
        },
        _ => (None, None),
    };
    let mut performers = Vec::new();
    if let Some(o) = &orc {
        for (n, r) in reps(o, 12) {
            if let Some(a) = practitioner(ctx, &r, &floc(o, 12, n)) {
                performers.push(performer("OP", "Ordering Provider", a));
            }
        }
    }
    for (n, r) in reps(&rxa, 10) {
        if let Some(a) = practitioner(ctx, &r, &floc(&rxa, 10, n)) {
            performers.push(performer("AP", "Administering Provider", a));
        }
    }
    let loc = administered_at(ctx, &rxa);
    let lot = rxa.field(15).repetitions().find_map(|r| r.part(1));
    let expiration = ctx.date(
        rxa.field(16).component(1).raw(),
        floc(&rxa, 16, 1).with_comp(1),
    );
    let maker = manufacturer(ctx, &rxa);
    let recorded = ctx.datetime(
        rxa.field(22).component(1).raw(),
        floc(&rxa, 22, 1).with_comp(1),
    );
    let (route, site) = match g.rxr.map(|i| segs[i]) {
        Some(rxr) => (
            rxr.field(1)
                .repetitions()
                .next()
                .and_then(|r| cwe_table(ctx, &r, "0162")),
            rxr.field(2)
                .repetitions()
                .next()
                .and_then(|r| cwe_table(ctx, &r, "0163")),
        ),
        None => (None, None),
    };
    let notes = notes_after(ctx, g.rxa);

    // OBX: Observations + Immunization fields
    let scope = ObsScope {
        patient: patient.clone(),
        encounter: enc_ref.cloned(),
        based_on: None,
        default_effective: Some(occurrence.clone()),
        category: None,
    };
    let mut eligibility = Vec::new();
    let mut funding = None;
    let mut education: Vec<Education> = Vec::new();
    let mut used = std::collections::HashSet::new();
    for (pos, &i) in g.obx.iter().enumerate() {
        let obx = segs[i];
        let code = obx
            .field(3)
            .repetitions()
            .next()
            .and_then(|r| r.part(1))
            .unwrap_or_default();
        let value = obx.field(5).repetition(1);
        let vtype = field_text(&obx, 2)
            .map(|t| t.to_ascii_uppercase())
            .unwrap_or_default();
        let coded = matches!(vtype.as_str(), "CE" | "CWE" | "CNE");
        let dated = matches!(vtype.as_str(), "DT" | "TS" | "DTM");
        match code.as_str() {
            "64994-7" if coded => eligibility.extend(cwe(ctx, &value)),
            "30963-3" if coded => funding = funding.or_else(|| cwe(ctx, &value)),
            "69764-9" | "30956-7" if coded => {
                education_item(&mut education, &obx).document_type =
                    value.part(2).or_else(|| value.part(1))
            }
            "29768-9" | "29769-7" if dated => {
                let at = ctx.datetime(value.component(1).raw(), floc(&obx, 5, 1).with_comp(1));
                let e = education_item(&mut education, &obx);
                if code == "29768-9" {
                    e.publication = at;
                } else {
                    e.presentation = at;
                }
            }
            _ => {}
        }
        let set = field_text(&obx, 1).unwrap_or_else(|| (pos + 1).to_string());
        let mut okey = format!("{id}|obx|{set}");
        let mut n = 1;
        while !used.insert(okey.clone()) {
            n += 1;
            okey = format!("{id}|obx|{set}#{n}");
        }
        let oid = ctx.id("Observation", &okey);
        match observation(ctx, &obx, i, &oid, &scope) {
            ObxOut::Observation(_) => {
                if let Some(m) = ctx.resource_mut("Observation", &oid) {
                    m.insert("partOf".into(), Value::Array(vec![imm_ref.clone()]));
                }
            }
            ObxOut::Attachment(_) => ctx.warn(
                207,
                Some(floc(&obx, 5, 1)),
                "an ED value after RXA has no place in an Immunization; not mapped",
            ),
            ObxOut::Nothing => {}
        }
    }
    let education: Vec<Value> = education
        .into_iter()
        .filter(|e| e.document_type.is_some())
        .map(|e| {
            obj! {
                "documentType": e.document_type,
                "publicationDate": e.publication,
                "presentationDate": e.presentation,
            }
        })
        .collect();

    let mut m = Map::with_capacity(24);
    m.insert("resourceType".into(), j("Immunization"));
    m.insert("id".into(), j(&id));
    let mut put = |k: &str, v: Value| super::json::put(&mut m, k, v);
    put("identifier", j(identifiers));
    put("status", j(status));
    put("statusReason", j(status_reason));
    put("vaccineCode", vaccine);
    put("patient", patient.reference.clone());
    put("encounter", j(enc_ref));
    put("occurrenceDateTime", j(occurrence));
    put("recorded", j(recorded));
    put("primarySource", j(primary));
    put("reportOrigin", j(origin));
    put("location", j(loc));
    put("manufacturer", j(maker));
    put("lotNumber", j(lot));
    put("expirationDate", j(expiration));
    put("site", j(site));
    put("route", j(route));
    put("doseQuantity", j(dose(ctx, &rxa)));
    put("performer", j(performers));
    put("note", j(notes));
    put("reasonCode", j(reasons));
    put("isSubpotent", j(subpotent));
    put("education", j(education));
    put("programEligibility", j(eligibility));
    put("fundingSource", j(funding));
    ctx.add("Immunization", &id, Value::Object(m));
}
