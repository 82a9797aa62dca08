//! PID + PD1 → Patient, NK1 → RelatedPerson, MRG → the retired Patient of
//! a merge (v2-to-FHIR IG segment maps PID[Patient], PD1[Patient],
//! NK1[RelatedPerson], MRG[Patient]; HL7 v2.5.1 ch. 3.4.2 PID, 3.4.10 PD1,
//! 3.4.5 NK1, 3.4.9 MRG).
//!
//! # Patient
//! * identifier: PID-3 (all repetitions), then PID-2 / PID-4 (older
//!   external/alternate ids) and PID-19 (type `SS`; system only if the
//!   configuration maps `SS`), duplicates removed. The **first PID-3
//!   identifier** (`system|value`) is the business key of the Patient id
//!   (PID-2, then PID-4 if PID-3 is empty; none of them → error 101 at
//!   PID-3).
//! * name: PID-5 (all), PID-9 alias names; PID-6 → extension
//!   `patient-mothersMaidenName`.
//! * birthDate: PID-7 with the sender's precision (`195603` → `1956-03`);
//!   a time of birth also goes into the `patient-birthTime` extension.
//! * gender: PID-8, table 0001: M male, F female, O/A other, U/N unknown;
//!   the German `D` (divers) and `X` (unbestimmt) → `other` with the
//!   `gender-amtlich-de` extension; anything else → `unknown` + warning 103.
//! * address PID-11; telecom PID-13 (home), PID-14 (work), PID-40;
//!   communication PID-15; maritalStatus PID-16 (v3 MaritalStatus codes,
//!   which reuse the v2 letters); multipleBirth PID-24/25; deceased
//!   PID-29/30; generalPractitioner PD1-4 (and PD1-3 as display);
//!   managingOrganization = the member institution.
//! * PID-21 mother's identifier → a RelatedPerson (MTH) with that
//!   identifier.
//! * Not mapped: race/ethnicity/religion/citizenship (PID-10, 22, 17, 26,
//!   US-specific extensions), PID-18 account number, PID-20 driver's
//!   licence.

use serde_json::{Map, Value};

use super::json::{j, obj};

use super::ctx::{reference, Ctx};
use super::types::{
    address, contact_point, cwe, cwe_table, cx, field_text, floc, human_name, name_display,
    practitioner, reps, Ident, Parts, XPN,
};
use crate::translate::hl7v2::{Location, Segment};

/// What later mappers need to know about the Patient.
#[derive(Clone, Debug)]
pub(crate) struct PatientRef {
    pub id: String,
    pub reference: Value,
}

/// PID-3 (then PID-2, PID-4) → identifiers, first one = key. Errors (101)
/// when there is none.
pub(crate) fn identifiers(ctx: &mut Ctx<'_, '_>, pid: &Segment<'_, '_>) -> Vec<Ident> {
    let mrn = ctx.cfg.mrn_system.clone();
    let mut out: Vec<Ident> = Vec::new();
    for field in [3usize, 2, 4] {
        for (n, r) in reps(pid, field) {
            let base = floc(pid, field, n);
            if let Some(id) = cx(ctx, &r, &base, &mrn) {
                if !out
                    .iter()
                    .any(|o| o.system == id.system && o.value == id.value)
                {
                    out.push(id);
                }
            }
        }
    }
    out
}

/// Builds and adds the Patient of `pid` (with PD1 if given).
pub(crate) fn patient(
    ctx: &mut Ctx<'_, '_>,
    pid: &Segment<'_, '_>,
    pd1: Option<&Segment<'_, '_>>,
) -> Option<PatientRef> {
    let idents = identifiers(ctx, pid);
    let Some(first) = idents.first() else {
        ctx.error(
            101,
            Some(floc(pid, 3, 1)),
            "PID-3 (patient identifier list) is empty: the patient cannot be identified",
        );
        return None;
    };
    let id = ctx.id("Patient", &first.key());
    let mut identifier: Vec<Value> = idents.iter().map(|i| i.json.clone()).collect();
    // PID-19 (SSN, US): kept as a typed identifier.
    if let Some(ssn) = field_text(pid, 19) {
        let sys = ctx.cfg.system_for("SS").map(str::to_owned);
        identifier.push(obj! {
            "type": obj! {
                "coding": vec![
                    obj! {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS"},
                ],
            },
            "system": sys,
            "value": ssn,
        });
    }

    let mut names = Vec::new();
    for field in [5usize, 9] {
        for (n, r) in reps(pid, field) {
            if let Some(name) = human_name(ctx, &r, &floc(pid, field, n), &XPN) {
                names.push(name);
            }
        }
    }

    let mut extension = Vec::new();
    if let Some(mmn) = pid
        .field(6)
        .repetitions()
        .find_map(|r| r.component(1).part(1))
    {
        extension.push(obj! {
            "url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
            "valueString": mmn,
        });
    }

    let (birth_date, birth_ext) = match ctx.date_and_time(
        pid.field(7).component(1).raw(),
        floc(pid, 7, 1).with_comp(1),
    ) {
        Some((d, Some(t))) => (
            Some(d),
            Some(obj! {
                "extension": vec![
                    obj! {
                        "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                        "valueDateTime": t,
                    },
                ],
            }),
        ),
        Some((d, None)) => (Some(d), None),
        None => (None, None),
    };

    let (gender, gender_ext) = match field_text(pid, 8) {
        Some(g) => gender(ctx, &g, floc(pid, 8, 1)),
        None => (None, None),
    };

    let mut addresses = Vec::new();
    for (n, r) in reps(pid, 11) {
        if let Some(a) = address(ctx, &r, &floc(pid, 11, n)) {
            addresses.push(a);
        }
    }
    let mut telecom = Vec::new();
    for (field, default_use) in [(13usize, Some("home")), (14, Some("work")), (40, None)] {
        for (_, r) in reps(pid, field) {
            if let Some(c) = contact_point(&r, default_use) {
                if !telecom.contains(&c) {
                    telecom.push(c);
                }
            }
        }
    }

    let communication: Vec<Value> = reps(pid, 15)
        .into_iter()
        .take(1)
        .filter_map(|(_, r)| cwe(ctx, &r))
        .map(|lang| obj! {"language": lang, "preferred": true})
        .collect();

    let marital = pid.field(16).repetitions().next().and_then(|r| {
        let code = r.part(1)?;
        if r.part(3).is_none() && "ADILMPSTUW".contains(code.as_str()) && code.len() == 1 {
            Some(obj! {
                "coding": vec![
                    obj! {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                        "code": code,
                        "display": r.part(2),
                    },
                ],
            })
        } else {
            cwe_table(ctx, &r, "0002")
        }
    });

    let multiple_birth = match (field_text(pid, 24).as_deref(), field_text(pid, 25)) {
        (_, Some(order))
            if order.bytes().all(|b| b.is_ascii_digit()) && order.parse::<u32>().is_ok() =>
        {
            Some(("multipleBirthInteger", j(order.parse::<u32>().unwrap_or(1))))
        }
        (Some("Y"), _) => Some(("multipleBirthBoolean", j(true))),
        (Some("N"), _) => Some(("multipleBirthBoolean", j(false))),
        _ => None,
    };

    let death_time = ctx.datetime(
        pid.field(29).component(1).raw(),
        floc(pid, 29, 1).with_comp(1),
    );
    let deceased = match (death_time, field_text(pid, 30).as_deref()) {
        (Some(t), _) => Some(("deceasedDateTime", j(t))),
        (None, Some("Y")) => Some(("deceasedBoolean", j(true))),
        (None, Some("N")) => Some(("deceasedBoolean", j(false))),
        _ => None,
    };

    let mut gps = Vec::new();
    if let Some(pd1) = pd1 {
        for (n, r) in reps(pd1, 4) {
            if let Some(p) = practitioner(ctx, &r, &floc(pd1, 4, n)) {
                gps.push(p);
            }
        }
        for (_, r) in reps(pd1, 3) {
            if let Some(name) = r.part(1) {
                gps.push(obj! {"display": name});
            }
        }
    }

    let mut m = Map::with_capacity(20);
    m.insert("resourceType".into(), j("Patient"));
    m.insert("id".into(), j(&id));
    m.insert("extension".into(), Value::Array(extension));
    m.insert("identifier".into(), Value::Array(identifier));
    m.insert("name".into(), Value::Array(names));
    m.insert("telecom".into(), Value::Array(telecom));
    m.insert("gender".into(), j(gender));
    if let Some(g) = gender_ext {
        m.insert("_gender".into(), g);
    }
    m.insert("birthDate".into(), j(birth_date));
    if let Some(b) = birth_ext {
        m.insert("_birthDate".into(), b);
    }
    if let Some((k, v)) = deceased {
        m.insert(k.into(), v);
    }
    m.insert("address".into(), Value::Array(addresses));
    m.insert("maritalStatus".into(), j(marital));
    if let Some((k, v)) = multiple_birth {
        m.insert(k.into(), v);
    }
    m.insert("communication".into(), Value::Array(communication));
    m.insert("generalPractitioner".into(), Value::Array(gps));
    m.insert("managingOrganization".into(), ctx.org_reference());
    let reference = ctx.add("Patient", &id, Value::Object(m))?;
    Some(PatientRef { id, reference })
}

/// Table 0001 (+ German D/X) → (gender, `_gender` extension).
fn gender(
    ctx: &mut Ctx<'_, '_>,
    code: &str,
    loc: Location,
) -> (Option<&'static str>, Option<Value>) {
    let de = |c: &str, d: &str| {
        Some(obj! {
            "extension": vec![
                obj! {
                    "url": "http://fhir.de/StructureDefinition/gender-amtlich-de",
                    "valueCoding": obj! {
                        "system": "http://fhir.de/CodeSystem/gender-amtlich-de",
                        "code": c,
                        "display": d,
                    },
                },
            ],
        })
    };
    match code.to_ascii_uppercase().as_str() {
        "M" => (Some("male"), None),
        "F" | "W" => (Some("female"), None),
        "O" | "A" => (Some("other"), None),
        "U" | "N" => (Some("unknown"), None),
        "D" => (Some("other"), de("D", "divers")),
        "X" => (Some("other"), de("X", "unbestimmt")),
        _ => {
            ctx.warn(
                103,
                Some(loc),
                format!("administrative sex {code:?} is not in table 0001; mapped to \"unknown\""),
            );
            (Some("unknown"), None)
        }
    }
}

/// NK1 → RelatedPerson. Key: patient id + name (family|given) +
/// relationship code (NK1-3), or the set id (NK1-1) when there is no name.
pub(crate) fn related_person(
    ctx: &mut Ctx<'_, '_>,
    nk1: &Segment<'_, '_>,
    patient: &PatientRef,
) -> Option<Value> {
    let mut names = Vec::new();
    for (n, r) in reps(nk1, 2) {
        if let Some(name) = human_name(ctx, &r, &floc(nk1, 2, n), &XPN) {
            names.push(name);
        }
    }
    let rel = nk1.field(3).repetitions().next();
    let rel_code = rel.and_then(|r| r.part(1).or_else(|| r.part(2)));
    let mut relationship = Vec::new();
    if let Some(r) = rel {
        if let Some(c) = cwe_table(ctx, &r, "0063") {
            relationship.push(c);
        }
    }
    if let Some(r) = nk1.field(7).repetitions().next() {
        if let Some(c) = cwe_table(ctx, &r, "0131") {
            relationship.push(c);
        }
    }
    let key_name = names.first().and_then(name_display);
    let key = match (&key_name, &rel_code) {
        (None, None) => format!(
            "{}|set|{}",
            patient.id,
            field_text(nk1, 1).unwrap_or_default()
        ),
        _ => format!(
            "{}|{}|{}",
            patient.id,
            key_name.clone().unwrap_or_default(),
            rel_code.clone().unwrap_or_default()
        ),
    };
    let id = ctx.id("RelatedPerson", &key);
    let mut telecom = Vec::new();
    for (field, default_use) in [
        (5usize, Some("home")),
        (6, Some("work")),
        (40, None),
        (41, None),
    ] {
        for (_, r) in reps(nk1, field) {
            if let Some(c) = contact_point(&r, default_use) {
                if !telecom.contains(&c) {
                    telecom.push(c);
                }
            }
        }
    }
    let mut addresses = Vec::new();
    for (n, r) in reps(nk1, 4) {
        if let Some(a) = address(ctx, &r, &floc(nk1, 4, n)) {
            addresses.push(a);
        }
    }
    let gender = field_text(nk1, 15).and_then(|g| match g.to_ascii_uppercase().as_str() {
        "M" => Some("male"),
        "F" | "W" => Some("female"),
        "O" | "A" | "D" | "X" => Some("other"),
        "U" | "N" => Some("unknown"),
        _ => None,
    });
    let birth = ctx.date(
        nk1.field(16).component(1).raw(),
        floc(nk1, 16, 1).with_comp(1),
    );
    let start = ctx.date(nk1.field(8).component(1).raw(), floc(nk1, 8, 1));
    let end = ctx.date(nk1.field(9).component(1).raw(), floc(nk1, 9, 1));
    if names.is_empty() && telecom.is_empty() && addresses.is_empty() {
        // Nothing that describes a person (e.g. only NK1-13, an organization).
        return None;
    }
    let res = obj! {
        "resourceType": "RelatedPerson",
        "id": &id,
        "patient": &patient.reference,
        "relationship": relationship,
        "name": names,
        "telecom": telecom,
        "gender": gender,
        "birthDate": birth,
        "address": addresses,
        "period": obj! {"start": start, "end": end},
    };
    ctx.add("RelatedPerson", &id, res)
}

/// PID-21 (mother's identifier) → a RelatedPerson with relationship MTH
/// (v3 RoleCode) that carries only the identifier. Key: patient id +
/// `mother` + the identifier.
pub(crate) fn mother(
    ctx: &mut Ctx<'_, '_>,
    pid: &Segment<'_, '_>,
    patient: &PatientRef,
) -> Option<Value> {
    let mrn = ctx.cfg.mrn_system.clone();
    let mut idents = Vec::new();
    for (n, r) in reps(pid, 21) {
        if let Some(i) = cx(ctx, &r, &floc(pid, 21, n), &mrn) {
            idents.push(i);
        }
    }
    let first = idents.first()?;
    let id = ctx.id(
        "RelatedPerson",
        &format!("{}|mother|{}", patient.id, first.key()),
    );
    let res = obj! {
        "resourceType": "RelatedPerson",
        "id": &id,
        "identifier": idents.iter().map(|i| i.json.clone()).collect::<Vec<_>>(),
        "patient": &patient.reference,
        "relationship": vec![
            obj! {
                "coding": vec![
                    obj! {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                        "code": "MTH",
                        "display": "mother",
                    },
                ],
            },
        ],
    };
    ctx.add("RelatedPerson", &id, res)
}

/// Adds `link` to a Patient already in the bundle.
pub(crate) fn add_link(ctx: &mut Ctx<'_, '_>, patient_id: &str, other: &str, kind: &str) {
    if let Some(p) = ctx.resource_mut("Patient", patient_id) {
        let link = obj! {"other": reference(format!("Patient/{other}")), "type": kind};
        match p.get_mut("link") {
            Some(Value::Array(a)) => a.push(link),
            _ => {
                p.insert("link".into(), j(vec![link]));
            }
        }
    }
}
