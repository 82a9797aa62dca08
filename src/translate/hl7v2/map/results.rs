//! ORU^R01 (ORC/OBR/OBX/NTE) → ServiceRequest, DiagnosticReport and
//! Observation; OBX in ADT messages → Observation (v2-to-FHIR IG message
//! map ORU_R01, segment maps OBR[ServiceRequest], OBR[DiagnosticReport],
//! OBX[Observation], NTE[Annotation]; HL7 v2.5.1 ch. 7.3.1 ORU^R01, 7.4.1
//! OBR, 7.4.2 OBX, 2.15.10 NTE).
//!
//! # Grouping
//! Segments are read in order: PID starts a patient (PD1, PV1 after it
//! belong to it), ORC is remembered for the next OBR, OBR starts an order,
//! OBX belongs to the last OBR, NTE belongs to the segment right before it.
//! Several PID groups in one ORU are supported.
//!
//! # Order (OBR, with ORC as fallback)
//! Business key: filler order number (OBR-3, else ORC-3), else placer
//! order number (OBR-2, else ORC-2), as `system|value`; neither → the
//! control id and OBR-1 with a warning. One **ServiceRequest** (status from
//! OBR-25: F/C → completed, X → revoked, else active; intent `order`;
//! code OBR-4; requester OBR-16, else ORC-12; authoredOn ORC-9; reasonCode
//! OBR-31; note = the NTEs after the OBR — R4 DiagnosticReport has no note)
//! and one **DiagnosticReport** (status from OBR-25 via table 0123; category
//! OBR-24 (table 0074); code OBR-4, required: empty → error 101; effective
//! OBR-7 [… OBR-8 as a period]; issued OBR-22; resultsInterpreter OBR-32;
//! result = the order's Observations; presentedForm = its ED values).
//!
//! # Observation (OBX)
//! Key: order key + OBX-1 set id (its position when OBX-1 is empty; a
//! repeated set id gets `#n`); in ADT messages: Encounter (or Patient) id +
//! OBX-3 code + set id. status OBX-11 (table 0085: F/U final, C corrected,
//! P/R/S preliminary, I/O registered, D/W entered-in-error, X/N cancelled,
//! empty unknown); code OBX-3 (empty → warning, no Observation); effective
//! OBX-14, else OBR-7; performer OBX-16 (+ OBX-23 as display); method OBX-17;
//! bodySite OBX-20; interpretation OBX-8 (v3 ObservationInterpretation
//! when the code is one of its codes, else table 0078); referenceRange
//! OBX-7 (`a-b`, `<b`, `<=b`, `>a`, `>=a` with the value's unit, else
//! text); note = following NTEs.
//!
//! Values by OBX-2:
//! * NM → valueQuantity: the number exactly as sent (JSON number, no float
//!   rounding), unit from OBX-6 — `system`/`code` only when OBX-6 is UCUM
//!   coded (OBX-6.3 or .6 = `UCUM`), else `unit` text only. `<5`-style
//!   values → comparator; anything else that is not a number →
//!   valueString + warning 102.
//! * SN → `[comparator] n` valueQuantity, `n1 - n2` valueRange,
//!   `n1 : n2` / `n1 / n2` valueRatio, `n1 . n2` decimal, `n +` valueString.
//! * CQ → valueQuantity; NR → valueRange; MO → valueQuantity in ISO 4217.
//! * ST, TX, FT, ID, IS → valueString (repetitions joined by line breaks).
//! * CE, CWE, CNE, CF → valueCodeableConcept.
//! * DT → valueDateTime (date precision); TS, DTM → valueDateTime; TM →
//!   valueTime.
//! * ED → an Attachment in the DiagnosticReport's presentedForm (R4 has no
//!   Observation.valueAttachment); content type from ED-2/ED-3, data
//!   re-encoded to base64 from ED-4 `Base64`/`Hex`/`A`; no Observation.
//! * Other types (RP, NA, MA, …) → Observation with dataAbsentReason
//!   `unsupported` + warning.
//! * Several repetitions for a single-valued type (`60~120` as NM): no
//!   value is picked (which one is meant cannot be known); dataAbsentReason
//!   `unsupported`, the field text as a note, and a warning.

use std::collections::HashSet;

use serde_json::Value;

use super::json::{j, obj};

use super::ctx::Ctx;
use super::encounter;
use super::patient::{self, PatientRef};
use super::types::{
    code_system, cwe, cwe_table, ei, field_text, floc, normalize_number, notes_after, number, pct,
    practitioner, practitioner_cnn, rep_text, reps, Ident, Parts, UCUM,
};
use crate::translate::hl7v2::{Hl7Time, Repetition, Segment};

/// Context shared by the Observations of one order (or of an ADT message).
pub(crate) struct ObsScope {
    pub patient: PatientRef,
    pub encounter: Option<Value>,
    pub based_on: Option<Value>,
    pub default_effective: Option<String>,
    pub category: Option<Value>,
}

/// What one OBX produced.
pub(crate) enum ObxOut {
    Observation(Value),
    Attachment(Value),
    Nothing,
}

// ---------------------------------------------------------------------------
// ORU
// ---------------------------------------------------------------------------

pub(crate) struct Order {
    key: String,
    dr_id: String,
    sr_ref: Option<Value>,
    identifiers: Vec<Value>,
    obr_index: usize,
    results: Vec<Value>,
    forms: Vec<Value>,
    used_keys: HashSet<String>,
    obx_count: usize,
    scope: ObsScope,
}

pub(crate) fn oru(ctx: &mut Ctx<'_, '_>) {
    let msg = ctx.msg;
    let segs: Vec<Segment<'_, '_>> = msg.segments().collect();
    let mut patient: Option<PatientRef> = None;
    let mut enc: Option<Value> = None;
    let mut orc: Option<usize> = None;
    let mut order: Option<Order> = None;
    let mut saw_pid = false;
    let mut saw_obr = false;
    for (i, seg) in segs.iter().enumerate() {
        match seg.id() {
            "PID" => {
                if let Some(o) = order.take() {
                    finish_order(ctx, &segs, o);
                }
                saw_pid = true;
                let pd1 = segs.get(i + 1).filter(|s| s.id() == "PD1");
                patient = patient::patient(ctx, seg, pd1);
                enc = None;
                orc = None;
            }
            "PV1" if order.is_none() => {
                if let Some(p) = &patient {
                    if let Some(plan) = encounter::plan(ctx, seg, p) {
                        let pv2 = segs.get(i + 1).filter(|s| s.id() == "PV2");
                        enc = encounter::encounter(ctx, &plan, seg, pv2, None, p, Vec::new());
                    }
                }
            }
            "ORC" => {
                if let Some(o) = order.take() {
                    finish_order(ctx, &segs, o);
                }
                orc = Some(i);
            }
            "OBR" => {
                if let Some(o) = order.take() {
                    finish_order(ctx, &segs, o);
                }
                saw_obr = true;
                let Some(p) = &patient else { continue };
                let orc_seg = orc.take().map(|k| segs[k]);
                order = start_order(ctx, i, seg, orc_seg.as_ref(), p.clone(), enc.clone());
            }
            "OBX" => match order.as_mut() {
                Some(o) => {
                    o.obx_count += 1;
                    let set = field_text(seg, 1).unwrap_or_else(|| o.obx_count.to_string());
                    let mut key = format!("{}|{set}", o.key);
                    let mut n = 1;
                    while !o.used_keys.insert(key.clone()) {
                        n += 1;
                        key = format!("{}|{set}#{n}", o.key);
                    }
                    let id = ctx.id("Observation", &key);
                    match observation(ctx, seg, i, &id, &o.scope) {
                        ObxOut::Observation(r) => o.results.push(r),
                        ObxOut::Attachment(a) => o.forms.push(a),
                        ObxOut::Nothing => {}
                    }
                }
                None => {
                    if let Some(p) = &patient {
                        let scope = ObsScope {
                            patient: p.clone(),
                            encounter: enc.clone(),
                            based_on: None,
                            default_effective: None,
                            category: None,
                        };
                        adt_observation(ctx, seg, i, &scope);
                    }
                }
            },
            _ => {}
        }
    }
    if let Some(o) = order.take() {
        finish_order(ctx, &segs, o);
    }
    if !saw_pid {
        ctx.error(
            100,
            Some(crate::translate::hl7v2::Location::segment("PID", 1)),
            "PID segment missing",
        );
    } else if !saw_obr {
        ctx.error(
            100,
            Some(crate::translate::hl7v2::Location::segment("OBR", 1)),
            "OBR segment missing: an ORU^R01 carries at least one order",
        );
    }
}

/// The placer/filler order number in `field` of OBR or ORC (EI), with the
/// institution's order system when the sender names none.
pub(crate) fn order_identifier(
    ctx: &Ctx<'_, '_>,
    seg: &Segment<'_, '_>,
    field: usize,
    kind: &str,
) -> Option<Ident> {
    let default = format!(
        "urn:carebridge:{}:{kind}-order",
        pct(&ctx.cfg.institution_id)
    );
    seg.field(field)
        .repetitions()
        .next()
        .and_then(|r| ei(ctx, &r, &default))
}

pub(crate) fn start_order(
    ctx: &mut Ctx<'_, '_>,
    i: usize,
    obr: &Segment<'_, '_>,
    orc: Option<&Segment<'_, '_>>,
    patient: PatientRef,
    encounter: Option<Value>,
) -> Option<Order> {
    let placer = order_identifier(ctx, obr, 2, "placer")
        .or_else(|| orc.and_then(|o| order_identifier(ctx, o, 2, "placer")));
    let filler = order_identifier(ctx, obr, 3, "filler")
        .or_else(|| orc.and_then(|o| order_identifier(ctx, o, 3, "filler")));
    let key = match (&filler, &placer) {
        (Some(f), _) => format!("filler|{}", f.key()),
        (None, Some(p)) => format!("placer|{}", p.key()),
        (None, None) => {
            ctx.warn(
                101,
                Some(floc(obr, 2, 1)),
                "no placer or filler order number (OBR-2/OBR-3, ORC-2/ORC-3): the report is keyed on this message only",
            );
            format!(
                "message|{}|{}",
                ctx.control_id,
                field_text(obr, 1).unwrap_or_else(|| obr.sequence().to_string())
            )
        }
    };
    let mut identifiers = Vec::new();
    for (ident, code) in [(&placer, "PLAC"), (&filler, "FILL")] {
        if let Some(x) = ident {
            let mut j = x.json.clone();
            j["type"] = obj! {
                "coding": vec![
                    obj! {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": code},
                ],
            };
            identifiers.push(j);
        }
    }
    let code = obr.field(4).repetitions().next().and_then(|r| cwe(ctx, &r));
    if code.is_none() {
        ctx.error(
            101,
            Some(floc(obr, 4, 1)),
            "OBR-4 (universal service identifier) is empty",
        );
    }
    let result_status = field_text(obr, 25).map(|s| s.to_ascii_uppercase());
    let effective = ctx.datetime(
        obr.field(7).component(1).raw(),
        floc(obr, 7, 1).with_comp(1),
    );
    let category = obr
        .field(24)
        .repetitions()
        .next()
        .and_then(|r| r.part(1))
        .and_then(|c| category_for(&c));

    // ServiceRequest
    let sr_id = ctx.id("ServiceRequest", &key);
    let requester = obr
        .field(16)
        .repetitions()
        .next()
        .filter(|r| !r.is_blank())
        .map(|r| (r, floc(obr, 16, 1)))
        .or_else(|| {
            orc.and_then(|o| {
                o.field(12)
                    .repetitions()
                    .next()
                    .map(|r| (r, floc(o, 12, 1)))
            })
        });
    let requester = requester.and_then(|(r, l)| practitioner(ctx, &r, &l));
    let authored =
        orc.and_then(|o| ctx.datetime(o.field(9).component(1).raw(), floc(o, 9, 1).with_comp(1)));
    let reasons: Vec<Value> = reps(obr, 31)
        .into_iter()
        .filter_map(|(_, r)| cwe(ctx, &r))
        .collect();
    let notes = notes_after(ctx, i);
    let sr_status = match result_status.as_deref() {
        Some("F") | Some("C") => "completed",
        Some("X") => "revoked",
        _ => "active",
    };
    let sr = obj! {
        "resourceType": "ServiceRequest",
        "id": &sr_id,
        "identifier": identifiers.clone(),
        "status": sr_status,
        "intent": "order",
        "code": code,
        "subject": &patient.reference,
        "encounter": &encounter,
        "authoredOn": authored,
        "requester": requester,
        "reasonCode": reasons,
        "note": notes,
    };
    let sr_ref = ctx.add("ServiceRequest", &sr_id, sr);
    let dr_id = ctx.id("DiagnosticReport", &key);
    Some(Order {
        key,
        dr_id,
        sr_ref: sr_ref.clone(),
        identifiers,
        obr_index: i,
        results: Vec::new(),
        forms: Vec::new(),
        used_keys: HashSet::new(),
        obx_count: 0,
        scope: ObsScope {
            patient,
            encounter,
            based_on: sr_ref,
            default_effective: effective,
            category,
        },
    })
}

impl Order {
    /// The order's ServiceRequest reference (`None` if it came out empty).
    pub(crate) fn service_request(&self) -> Option<&Value> {
        self.sr_ref.as_ref()
    }
}

fn finish_order(ctx: &mut Ctx<'_, '_>, segs: &[Segment<'_, '_>], o: Order) {
    let obr = segs[o.obr_index];
    let code = obr.field(4).repetitions().next().and_then(|r| cwe(ctx, &r));
    let Some(code) = code else { return };
    let status = match field_text(&obr, 25)
        .map(|s| s.to_ascii_uppercase())
        .as_deref()
    {
        Some("O") | Some("I") => "registered",
        Some("S") | Some("A") | Some("R") => "partial",
        Some("P") => "preliminary",
        Some("C") => "corrected",
        Some("F") => "final",
        Some("X") => "cancelled",
        _ => "unknown",
    };
    let category = obr
        .field(24)
        .repetitions()
        .next()
        .and_then(|r| cwe_table(ctx, &r, "0074"));
    let end = ctx.datetime(
        obr.field(8).component(1).raw(),
        floc(&obr, 8, 1).with_comp(1),
    );
    let (eff_dt, eff_period) = match (&o.scope.default_effective, end) {
        (Some(s), Some(e)) if s != &e => (None, Some(obj! {"start": s, "end": e})),
        (s, _) => (s.clone(), None),
    };
    let issued = ctx.instant(
        obr.field(22).component(1).raw(),
        floc(&obr, 22, 1).with_comp(1),
    );
    let mut interpreters = Vec::new();
    for r in obr.field(32).repetitions() {
        if let Some(p) = practitioner_cnn(ctx, &r.component(1)) {
            interpreters.push(p);
        }
    }
    let res = obj! {
        "resourceType": "DiagnosticReport",
        "id": &o.dr_id,
        "identifier": o.identifiers,
        "basedOn": o.sr_ref.map(|r| vec![r]),
        "status": status,
        "category": category.map(|c| vec![c]),
        "code": code,
        "subject": &o.scope.patient.reference,
        "encounter": o.scope.encounter,
        "effectiveDateTime": eff_dt,
        "effectivePeriod": eff_period,
        "issued": issued,
        "resultsInterpreter": interpreters,
        "result": o.results,
        "presentedForm": o.forms,
    };
    ctx.add("DiagnosticReport", &o.dr_id, res);
}

/// OBR-24 (table 0074) → observation-category.
fn category_for(code: &str) -> Option<Value> {
    let c = match code.to_ascii_uppercase().as_str() {
        "LAB" | "HM" | "CH" | "MB" | "MCB" | "BLB" | "SR" | "SP" | "CP" | "IMM" | "MYC" | "PAR"
        | "VR" | "TX" | "URN" | "HEM" | "BG" | "CG" | "OSL" | "CUS" => "laboratory",
        "RAD" | "CT" | "CTH" | "MR" | "NMR" | "NMS" | "US" | "RX" | "XRC" | "VUS" | "OUS" => {
            "imaging"
        }
        _ => return None,
    };
    Some(obj! {
        "coding": vec![
            obj! {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": c},
        ],
    })
}

// ---------------------------------------------------------------------------
// ADT OBX
// ---------------------------------------------------------------------------

/// An OBX outside an order (ADT): keyed on the Encounter/Patient + code +
/// set id.
pub(crate) fn adt_observation(
    ctx: &mut Ctx<'_, '_>,
    obx: &Segment<'_, '_>,
    i: usize,
    scope: &ObsScope,
) -> Option<Value> {
    let scope_id = scope
        .encounter
        .as_ref()
        .and_then(|e| e.get("reference"))
        .and_then(Value::as_str)
        .unwrap_or(&scope.patient.id)
        .to_owned();
    let code = obx
        .field(3)
        .repetitions()
        .next()
        .and_then(|r| r.part(1).or_else(|| r.part(2)));
    let set = field_text(obx, 1).unwrap_or_else(|| obx.sequence().to_string());
    let id = ctx.id(
        "Observation",
        &format!("{scope_id}|obx|{}|{set}", code.unwrap_or_default()),
    );
    match observation(ctx, obx, i, &id, scope) {
        ObxOut::Observation(r) => Some(r),
        ObxOut::Attachment(_) => {
            ctx.warn(
                207,
                Some(floc(obx, 5, 1)),
                "an ED value outside an order has no DiagnosticReport to attach to; not mapped",
            );
            None
        }
        ObxOut::Nothing => None,
    }
}

// ---------------------------------------------------------------------------
// OBX → Observation
// ---------------------------------------------------------------------------

fn obs_status(code: Option<&str>) -> &'static str {
    match code {
        Some("F") | Some("U") => "final",
        Some("C") => "corrected",
        Some("P") | Some("R") | Some("S") => "preliminary",
        Some("I") | Some("O") => "registered",
        Some("D") | Some("W") => "entered-in-error",
        Some("X") | Some("N") => "cancelled",
        _ => "unknown",
    }
}

const V3_INTERPRETATION: &[&str] = &[
    "<", ">", "A", "AA", "AC", "B", "CAR", "D", "DET", "E", "EX", "EXP", "H", "H>", "HH", "HM",
    "HU", "HX", "I", "IE", "IND", "L", "L<", "LL", "LU", "LX", "MS", "N", "NCL", "ND", "NEG", "NR",
    "NS", "OBX", "POS", "QCF", "R", "RR", "S", "SDD", "SYN-R", "SYN-S", "TOX", "U", "UNE", "VS",
    "W", "WR",
];

fn interpretation(ctx: &Ctx<'_, '_>, r: &Repetition<'_>) -> Option<Value> {
    let code = r.part(1)?;
    let sys = r.part(3).map(|s| s.to_ascii_uppercase());
    let v2_named = matches!(sys.as_deref(), None | Some("HL70078") | Some("HL7NNNN"));
    if v2_named && V3_INTERPRETATION.contains(&code.as_str()) {
        return Some(obj! {
            "coding": vec![
                obj! {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                    "code": code,
                    "display": r.part(2),
                },
            ],
        });
    }
    cwe_table(ctx, r, "0078")
}

/// OBX-6 → (unit text, system, code).
fn units(
    ctx: &Ctx<'_, '_>,
    obx: &Segment<'_, '_>,
) -> (Option<String>, Option<String>, Option<String>) {
    let r = obx.field(6).repetition(1);
    let is_ucum = |s: Option<String>| s.map(|s| code_system(ctx, &s) == UCUM).unwrap_or(false);
    if let Some(code) = r.part(1) {
        if is_ucum(r.part(3)) {
            return (
                r.part(2).or(Some(code.clone())),
                Some(UCUM.into()),
                Some(code),
            );
        }
    }
    if let Some(code) = r.part(4) {
        if is_ucum(r.part(6)) {
            return (
                r.part(2).or(r.part(5)).or(Some(code.clone())),
                Some(UCUM.into()),
                Some(code),
            );
        }
    }
    (r.part(2).or_else(|| r.part(1)), None, None)
}

fn quantity(
    value: &str,
    comparator: Option<&str>,
    u: &(Option<String>, Option<String>, Option<String>),
) -> Option<Value> {
    let n = number(value)?;
    Some(obj! {"value": n, "comparator": comparator, "unit": &u.0, "system": &u.1, "code": &u.2})
}

/// `<5`, `<=5`, `>10`, `>=10` → (comparator, number).
fn split_comparator(s: &str) -> Option<(&'static str, String)> {
    let s = s.trim();
    for (p, c) in [("<=", "<="), (">=", ">="), ("<", "<"), (">", ">")] {
        if let Some(rest) = s.strip_prefix(p) {
            return normalize_number(rest).map(|n| (c, n));
        }
    }
    None
}

fn reference_range(text: &str, u: &(Option<String>, Option<String>, Option<String>)) -> Value {
    let simple = |v: &str| {
        number(v).map(|n| {
            obj! {
                "value": n,
                "unit": &u.0,
                "system": &u.1,
                "code": &u.2,
            }
        })
    };
    let t = text.trim();
    if let Some((c, n)) = split_comparator(t) {
        return match c {
            "<" | "<=" => obj! {"high": simple(&n), "text": t},
            _ => obj! {"low": simple(&n), "text": t},
        };
    }
    // a-b (a may be negative: search for the separator after the first char)
    if let Some(pos) = t
        .char_indices()
        .skip(1)
        .find(|&(_, c)| c == '-')
        .map(|(i, _)| i)
    {
        if let (Some(a), Some(b)) = (normalize_number(&t[..pos]), normalize_number(&t[pos + 1..])) {
            return obj! {"low": simple(&a), "high": simple(&b)};
        }
    }
    obj! {"text": t}
}

/// Maps one OBX. `i` is its segment index (for the NTEs after it).
pub(crate) fn observation(
    ctx: &mut Ctx<'_, '_>,
    obx: &Segment<'_, '_>,
    i: usize,
    id: &str,
    scope: &ObsScope,
) -> ObxOut {
    let code = obx.field(3).repetitions().next().and_then(|r| cwe(ctx, &r));
    let Some(code) = code else {
        ctx.warn(
            101,
            Some(floc(obx, 3, 1)),
            "OBX-3 (observation identifier) is empty: no Observation",
        );
        return ObxOut::Nothing;
    };
    let vtype = field_text(obx, 2)
        .map(|s| s.to_ascii_uppercase())
        .unwrap_or_default();
    let values: Vec<(usize, Repetition<'_>)> = reps(obx, 5);
    let u = units(ctx, obx);
    let mut value: Option<(&'static str, Value)> = None;
    let mut absent = false;
    let multi_ok = matches!(vtype.as_str(), "ST" | "TX" | "FT" | "ID" | "IS" | "TN");
    let mut raw_note: Option<String> = None;
    if values.len() > 1 && !multi_ok {
        // Several values for a single-valued type: which one is meant is
        // unknowable, so none is presented as *the* value.
        ctx.warn(
            102,
            Some(floc(obx, 5, 2)),
            format!(
                "OBX-5 has {} repetitions for value type {vtype}; no value mapped (dataAbsentReason), the text is kept as a note",
                values.len()
            ),
        );
        absent = true;
        raw_note = rep_text_field(obx);
    }
    if let Some(&(_, first)) = values.first().filter(|_| !absent) {
        match vtype.as_str() {
            "NM" => {
                let raw = first.decoded();
                let raw = raw.trim();
                if let Some(n) = normalize_number(raw) {
                    value = quantity(&n, None, &u).map(|q| ("valueQuantity", q));
                } else if let Some((c, n)) = split_comparator(raw) {
                    value = quantity(&n, Some(c), &u).map(|q| ("valueQuantity", q));
                } else {
                    ctx.warn(
                        102,
                        Some(floc(obx, 5, 1)),
                        format!(
                            "OBX-5 {raw:?} is not a number (value type NM); mapped as valueString"
                        ),
                    );
                    value = Some(("valueString", j(raw)));
                }
            }
            "SN" => {
                value = structured_numeric(ctx, obx, &first, &u);
            }
            "CQ" => {
                let c = first.component(2);
                let unit_text = c.part(2).or_else(|| c.part(1));
                let uu = if c
                    .part(3)
                    .map(|s| code_system(ctx, &s) == UCUM)
                    .unwrap_or(false)
                {
                    (unit_text, Some(UCUM.to_owned()), c.part(1))
                } else if c.is_blank() {
                    u.clone()
                } else {
                    (unit_text, None, None)
                };
                value = first
                    .part(1)
                    .and_then(|v| normalize_number(&v))
                    .and_then(|n| quantity(&n, None, &uu))
                    .map(|q| ("valueQuantity", q));
            }
            "MO" => {
                let cur = first.part(2);
                value = first
                    .part(1)
                    .and_then(|v| normalize_number(&v))
                    .and_then(|n| {
                        quantity(
                            &n,
                            None,
                            &(
                                cur.clone(),
                                cur.as_ref().map(|_| "urn:iso:std:iso:4217".to_owned()),
                                cur.clone(),
                            ),
                        )
                    })
                    .map(|q| ("valueQuantity", q));
            }
            "NR" => {
                let low = first
                    .part(1)
                    .and_then(|v| normalize_number(&v))
                    .and_then(|n| quantity(&n, None, &u));
                let high = first
                    .part(2)
                    .and_then(|v| normalize_number(&v))
                    .and_then(|n| quantity(&n, None, &u));
                if low.is_some() || high.is_some() {
                    value = Some(("valueRange", obj! {"low": low, "high": high}));
                }
            }
            "ST" | "TX" | "FT" | "ID" | "IS" | "TN" => {
                let text: Vec<String> = values.iter().filter_map(|(_, r)| rep_text(*r)).collect();
                if !text.is_empty() {
                    value = Some(("valueString", j(text.join("\n"))));
                }
            }
            "CE" | "CWE" | "CNE" | "CF" => {
                value = cwe(ctx, &first).map(|c| ("valueCodeableConcept", c));
            }
            "DT" => {
                value = ctx
                    .date(first.component(1).raw(), floc(obx, 5, 1).with_comp(1))
                    .map(|d| ("valueDateTime", j(d)));
            }
            "TS" | "DTM" => {
                value = ctx
                    .datetime(first.component(1).raw(), floc(obx, 5, 1).with_comp(1))
                    .map(|d| ("valueDateTime", j(d)));
            }
            "TM" => {
                let raw = first.component(1).raw().trim();
                match Hl7Time::parse(raw) {
                    Ok(t) => value = Some(("valueTime", j(t.to_fhir_time()))),
                    Err(e) => {
                        let err = e.at(&floc(obx, 5, 1).with_comp(1));
                        ctx.push_error((&err).into());
                    }
                }
            }
            "ED" => {
                return match attachment(ctx, obx, &first) {
                    Some(a) => ObxOut::Attachment(a),
                    None => ObxOut::Nothing,
                };
            }
            other => {
                ctx.warn(
                    102,
                    Some(floc(obx, 2, 1)),
                    format!("OBX value type {other:?} is not supported; Observation written without a value"),
                );
                absent = true;
            }
        }
    }
    let status = obs_status(
        field_text(obx, 11)
            .map(|s| s.to_ascii_uppercase())
            .as_deref(),
    );
    let effective = ctx
        .datetime(
            obx.field(14).component(1).raw(),
            floc(obx, 14, 1).with_comp(1),
        )
        .or_else(|| scope.default_effective.clone());
    let mut performers = Vec::new();
    for (n, r) in reps(obx, 16) {
        if let Some(p) = practitioner(ctx, &r, &floc(obx, 16, n)) {
            performers.push(p);
        }
    }
    if let Some(org) = obx.field(23).repetitions().next().and_then(|r| r.part(1)) {
        performers.push(obj! {"display": org});
    }
    let interpretations: Vec<Value> = reps(obx, 8)
        .into_iter()
        .filter_map(|(_, r)| interpretation(ctx, &r))
        .collect();
    let method = obx
        .field(17)
        .repetitions()
        .next()
        .and_then(|r| cwe(ctx, &r));
    let body_site = obx
        .field(20)
        .repetitions()
        .next()
        .and_then(|r| cwe(ctx, &r));
    let range = field_text(obx, 7).map(|t| vec![reference_range(&t, &u)]);
    let mut notes = notes_after(ctx, i);
    if let Some(t) = raw_note {
        notes.insert(0, obj! {"text": format!("OBX-5 as sent: {t}")});
    }
    let mut res = obj! {
        "resourceType": "Observation",
        "id": &id,
        "basedOn": scope.based_on.clone().map(|r| vec![r]),
        "status": status,
        "category": scope.category.clone().map(|c| vec![c]),
        "code": code,
        "subject": &scope.patient.reference,
        "encounter": &scope.encounter,
        "effectiveDateTime": effective,
        "performer": performers,
    };
    let m = res.as_object_mut().expect("object");
    if let Some((k, v)) = value {
        m.insert(k.into(), v);
    } else if absent {
        m.insert(
            "dataAbsentReason".into(),
            obj! {
                "coding": vec![
                    obj! {
                        "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                        "code": "unsupported",
                    },
                ],
            },
        );
    }
    m.insert("interpretation".into(), j(interpretations));
    m.insert("note".into(), j(notes));
    m.insert("bodySite".into(), j(body_site));
    m.insert("method".into(), j(method));
    m.insert("referenceRange".into(), j(range));
    match ctx.add("Observation", id, res) {
        Some(r) => ObxOut::Observation(r),
        None => ObxOut::Nothing,
    }
}

/// The whole OBX-5 field, unescaped (repetitions stay separated by the
/// repetition character).
fn rep_text_field(obx: &Segment<'_, '_>) -> Option<String> {
    let f = obx.field(5);
    if f.is_null() {
        return None;
    }
    super::types::clean(f.decoded())
}

/// SN: 1 comparator, 2 num1, 3 separator/suffix, 4 num2.
fn structured_numeric(
    ctx: &mut Ctx<'_, '_>,
    obx: &Segment<'_, '_>,
    r: &Repetition<'_>,
    u: &(Option<String>, Option<String>, Option<String>),
) -> Option<(&'static str, Value)> {
    let comparator = r.part(1);
    let n1 = r.part(2).and_then(|v| normalize_number(&v));
    let sep = r.part(3);
    let n2 = r.part(4).and_then(|v| normalize_number(&v));
    let simple = |v: &str| {
        number(v).map(|n| {
            obj! {
                "value": n,
                "unit": &u.0,
                "system": &u.1,
                "code": &u.2,
            }
        })
    };
    match (sep.as_deref(), &n1, &n2) {
        (None, Some(a), None) => {
            let comp = match comparator.as_deref() {
                None | Some("=") => None,
                Some(c @ ("<" | ">" | "<=" | ">=")) => Some(c.to_owned()),
                Some(other) => {
                    ctx.warn(
                        102,
                        Some(floc(obx, 5, 1).with_comp(1)),
                        format!(
                            "SN comparator {other:?} has no FHIR equivalent; mapped as valueString"
                        ),
                    );
                    return Some(("valueString", j(format!("{other}{a}"))));
                }
            };
            quantity(a, comp.as_deref(), u).map(|q| ("valueQuantity", q))
        }
        (Some("-"), a, b) if a.is_some() || b.is_some() => Some((
            "valueRange",
            obj! {"low": a.as_deref().and_then(simple), "high": b.as_deref().and_then(simple)},
        )),
        (Some(":") | Some("/"), Some(a), Some(b)) => Some((
            "valueRatio",
            obj! {"numerator": simple(a), "denominator": number(b).map(|n| obj!{"value": n})},
        )),
        (Some("."), Some(a), Some(b)) => {
            let lit = normalize_number(&format!("{a}.{}", b.trim_start_matches('-')))?;
            quantity(&lit, None, u).map(|q| ("valueQuantity", q))
        }
        _ => {
            let text: String = [comparator, r.part(2), sep, r.part(4)]
                .into_iter()
                .flatten()
                .collect();
            if text.is_empty() {
                None
            } else {
                ctx.warn(
                    102,
                    Some(floc(obx, 5, 1)),
                    format!(
                        "SN value {text:?} is not a number, range or ratio; mapped as valueString"
                    ),
                );
                Some(("valueString", j(text)))
            }
        }
    }
}

// ---------------------------------------------------------------------------
// ED → Attachment
// ---------------------------------------------------------------------------

fn mime(kind: Option<&str>, subtype: Option<&str>) -> String {
    let k = kind.unwrap_or("").to_ascii_uppercase();
    let s = subtype.unwrap_or("").to_ascii_lowercase();
    if s.contains('/') {
        return s;
    }
    let known = match s.as_str() {
        "pdf" => Some("application/pdf"),
        "jpeg" | "jpg" => Some("image/jpeg"),
        "png" => Some("image/png"),
        "gif" => Some("image/gif"),
        "tiff" | "tif" => Some("image/tiff"),
        "rtf" => Some("application/rtf"),
        "html" => Some("text/html"),
        "xml" => Some("application/xml"),
        "dicom" => Some("application/dicom"),
        _ => None,
    };
    if let Some(m) = known {
        return m.to_owned();
    }
    match (k.as_str(), s.is_empty()) {
        ("TEXT" | "TX" | "FT" | "ST", _) => "text/plain".into(),
        ("AP" | "APPLICATION", false) => format!("application/{s}"),
        ("IM" | "IMAGE", false) => format!("image/{s}"),
        ("AU" | "AUDIO", false) => format!("audio/{s}"),
        _ => "application/octet-stream".into(),
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub(crate) fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        out.push(B64[(n >> 18) as usize & 63] as char);
        out.push(B64[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            B64[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            B64[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// Canonical base64 check (after removing white space): alphabet, length a
/// multiple of 4, at most two `=` at the end.
fn base64_clean(s: &str) -> Option<String> {
    let t: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if t.is_empty() || !t.len().is_multiple_of(4) {
        return None;
    }
    let body = t.trim_end_matches('=');
    if t.len() - body.len() > 2 || !body.bytes().all(|b| B64.contains(&b)) {
        return None;
    }
    Some(t)
}

pub(crate) fn attachment(
    ctx: &mut Ctx<'_, '_>,
    obx: &Segment<'_, '_>,
    r: &Repetition<'_>,
) -> Option<Value> {
    let kind = r.part(2);
    let subtype = r.part(3);
    let encoding = r.part(4).map(|s| s.to_ascii_uppercase());
    let raw = r.component(5).decoded();
    let data = match encoding.as_deref() {
        Some("BASE64") => base64_clean(&raw),
        Some("HEX") => {
            let h: Vec<u8> = raw.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
            if h.len().is_multiple_of(2) && h.iter().all(u8::is_ascii_hexdigit) {
                let bytes: Vec<u8> = h
                    .chunks(2)
                    .map(|p| {
                        let v = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                        v(p[0]) << 4 | v(p[1])
                    })
                    .collect();
                Some(base64_encode(&bytes))
            } else {
                None
            }
        }
        Some("A") | None => (!raw.trim().is_empty()).then(|| base64_encode(raw.as_bytes())),
        Some(_) => None,
    };
    let Some(data) = data else {
        ctx.warn(
            102,
            Some(floc(obx, 5, 1).with_comp(5)),
            "ED data is empty or not valid for its encoding (ED-4); not mapped",
        );
        return None;
    };
    let title = obx
        .field(3)
        .repetitions()
        .next()
        .and_then(|c| c.part(2).or_else(|| c.part(1)));
    let creation = ctx.datetime(
        obx.field(14).component(1).raw(),
        floc(obx, 14, 1).with_comp(1),
    );
    Some(obj! {
        "contentType": mime(kind.as_deref(), subtype.as_deref()),
        "data": data,
        "title": title,
        "creation": creation,
    })
}
