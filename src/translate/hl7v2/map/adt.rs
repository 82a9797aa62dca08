//! ADT messages (HL7 v2.5.1 ch. 3.3): A01, A02, A03, A04, A05, A08, A11,
//! A13, A28, A31 and the A40 merge.
//!
//! # Visit and patient events
//! The segments are mapped in this order: PID (+PD1) → Patient (PID-21 →
//! the mother as RelatedPerson); NK1 → RelatedPerson; DG1 → Condition (and Encounter.diagnosis); PV1 (+PV2,
//! EVN) → Encounter; PR1 → Procedure; AL1 → AllergyIntolerance; IN1 →
//! Coverage; OBX → Observation (NTE after an OBX → its note). Segments of
//! other types (SFT, ROL, GT1, IN2, ACC, PDA, DB1, ARV, Z-segments …) are
//! not mapped. PID is required (error 100); PV1 is required for A01–A13
//! except A08 (error 100), optional for A08/A28/A31.
//!
//! # A40 merge (v2.5.1 3.3.40, ADT_A39 structure)
//! Each PID (the surviving patient) is followed by an MRG whose MRG-1 names
//! the patient that is merged away. The survivor is written from its PID
//! with `active: true` and `link: [{other: old, type: "replaces"}]`; the
//! old Patient (id from the first MRG-1 identifier, by the same rule as
//! PID-3) is written with the MRG-1 identifiers, MRG-7 name, `active:
//! false` and `link: [{other: survivor, type: "replaced-by"}]` (FHIR R4
//! `patient.html#links`). Because every entry is a PUT, the old Patient's
//! current version then holds only that; its earlier content stays in its
//! history. Resources that point at the old Patient are not rewritten: the
//! `replaced-by` link is what readers follow. A missing MRG → error 100; an
//! empty MRG-1 → error 101; MRG-1 naming the survivor itself → warning,
//! nothing merged.

use serde_json::Value;

use super::json::obj;

use super::clinical;
use super::ctx::Ctx;
use super::encounter::{self, is_visit_event};
use super::patient::{self, add_link};
use super::results::{adt_observation, ObsScope};
use super::types::{cx, floc, human_name, reps, XPN};
use crate::translate::hl7v2::{Location, Segment};

pub(crate) fn adt(ctx: &mut Ctx<'_, '_>) {
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
    let evn = segs.iter().find(|s| s.id() == "EVN");
    let pv1 = segs.iter().find(|s| s.id() == "PV1");
    let pv2 = segs.iter().find(|s| s.id() == "PV2");
    let trigger = ctx.trigger.clone();
    if pv1.is_none() && is_visit_event(&trigger) {
        ctx.error(
            100,
            Some(Location::segment("PV1", 1)),
            format!("PV1 segment missing (required in ADT^{trigger})"),
        );
        return;
    }
    let plan = pv1.and_then(|p| encounter::plan(ctx, p, &patient));
    let enc_ref = plan.as_ref().map(|p| p.reference());

    patient::mother(ctx, &pid, &patient);
    for nk1 in segs.iter().filter(|s| s.id() == "NK1") {
        patient::related_person(ctx, nk1, &patient);
    }
    let mut diagnoses: Vec<Value> = Vec::new();
    for dg1 in segs.iter().filter(|s| s.id() == "DG1") {
        let enc = plan
            .as_ref()
            .zip(enc_ref.as_ref())
            .map(|(p, r)| (p.id.as_str(), r));
        if let Some(d) = clinical::condition(ctx, dg1, &patient, enc) {
            diagnoses.push(d);
        }
    }
    if let (Some(plan), Some(pv1)) = (&plan, pv1) {
        encounter::encounter(ctx, plan, pv1, pv2, evn, &patient, diagnoses);
    }
    for pr1 in segs.iter().filter(|s| s.id() == "PR1") {
        let enc = plan
            .as_ref()
            .zip(enc_ref.as_ref())
            .map(|(p, r)| (p.id.as_str(), r));
        clinical::procedure(ctx, pr1, &patient, enc);
    }
    for al1 in segs.iter().filter(|s| s.id() == "AL1") {
        clinical::allergy(ctx, al1, &patient);
    }
    for in1 in segs.iter().filter(|s| s.id() == "IN1") {
        clinical::coverage(ctx, in1, &patient);
    }
    let scope = ObsScope {
        patient: patient.clone(),
        encounter: enc_ref.clone(),
        based_on: None,
        default_effective: None,
        category: None,
    };
    for (i, obx) in segs.iter().enumerate().filter(|(_, s)| s.id() == "OBX") {
        adt_observation(ctx, obx, i, &scope);
    }
}

pub(crate) fn merge(ctx: &mut Ctx<'_, '_>) {
    let msg = ctx.msg;
    let segs: Vec<Segment<'_, '_>> = msg.segments().collect();
    let pids: Vec<usize> = segs
        .iter()
        .enumerate()
        .filter(|(_, s)| s.id() == "PID")
        .map(|(i, _)| i)
        .collect();
    if pids.is_empty() {
        ctx.error(
            100,
            Some(Location::segment("PID", 1)),
            "PID segment missing",
        );
        return;
    }
    for (k, &pi) in pids.iter().enumerate() {
        let end = pids.get(k + 1).copied().unwrap_or(segs.len());
        let group = &segs[pi..end];
        let pid = group[0];
        let Some(mrg) = group.iter().find(|s| s.id() == "MRG") else {
            ctx.error(
                100,
                Some(Location::segment("MRG", k + 1)),
                "MRG segment missing: an A40 names the merged patient in MRG-1",
            );
            continue;
        };
        let pd1 = group.iter().find(|s| s.id() == "PD1");
        let Some(survivor) = patient::patient(ctx, &pid, pd1) else {
            continue;
        };
        let mrn = ctx.cfg.mrn_system.clone();
        let mut old_idents = Vec::new();
        for (n, r) in reps(mrg, 1) {
            if let Some(i) = cx(ctx, &r, &floc(mrg, 1, n), &mrn) {
                old_idents.push(i);
            }
        }
        let Some(first) = old_idents.first() else {
            ctx.error(
                101,
                Some(floc(mrg, 1, 1)),
                "MRG-1 (prior patient identifier list) is empty",
            );
            continue;
        };
        let old_id = ctx.id("Patient", &first.key());
        if old_id == survivor.id {
            ctx.warn(
                205,
                Some(floc(mrg, 1, 1)),
                "MRG-1 names the surviving patient itself; nothing to merge",
            );
            continue;
        }
        let mut names = Vec::new();
        for (n, r) in reps(mrg, 7) {
            if let Some(name) = human_name(ctx, &r, &floc(mrg, 7, n), &XPN) {
                names.push(name);
            }
        }
        let old = obj! {
            "resourceType": "Patient",
            "id": &old_id,
            "identifier": old_idents.iter().map(|i| i.json.clone()).collect::<Vec<_>>(),
            "active": false,
            "name": names,
            "managingOrganization": ctx.org_reference(),
            "link": vec![obj! {"other": survivor.reference, "type": "replaced-by"}],
        };
        ctx.add("Patient", &old_id, old);
        if let Some(p) = ctx.resource_mut("Patient", &survivor.id) {
            // `active` right after `identifier`, as in the R4 element order.
            let mut ordered = serde_json::Map::with_capacity(p.len() + 1);
            for (k, v) in std::mem::take(p) {
                let after_identifier = k == "identifier";
                ordered.insert(k, v);
                if after_identifier {
                    ordered.insert("active".into(), Value::Bool(true));
                }
            }
            ordered.entry("active").or_insert(Value::Bool(true));
            *p = ordered;
        }
        add_link(ctx, &survivor.id, &old_id, "replaces");
    }
}
