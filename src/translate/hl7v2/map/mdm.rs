//! MDM^T01–T11 (medical document management) → DocumentReference (HL7
//! v2.5.1 ch. 9.5 trigger events, 9.6.1 TXA; message structures MDM_T01 /
//! MDM_T02; v2-to-FHIR IG 1.0.0 message map MDM_T02 and segment maps
//! TXA[DocumentReference], OBX[DocumentReference]; FHIR R4
//! `documentreference.html`).
//!
//! # Segments
//! PID (+PD1) → Patient; PV1 (+PV2) → Encounter when it has a visit number
//! or admit time; each ORC/OBR with an OBR-4 → ServiceRequest (as in ORU;
//! linked from `context.related`); TXA (**required**, error 100) → one
//! DocumentReference; the OBX segments after TXA → its content.
//!
//! # DocumentReference (TXA)
//! * id key: `doc|` + TXA-12 unique document number (EI `system|value`,
//!   default system `urn:carebridge:<institution>:document`); **required**:
//!   empty → error 101 at TXA-12. So an edit (T07/T08) or status change
//!   (T03/T04), which keep the number, update the same DocumentReference;
//!   an addendum or replacement has its own number.
//! * masterIdentifier TXA-12; type TXA-2 (table 0270); securityLabel
//!   TXA-18 (table 0272: `V`/`R` as such, `U` → `N`, v3-Confidentiality).
//! * date (instant) and context.period.start: TXA-4 activity date/time.
//! * author: TXA-5 (primary activity provider) and TXA-9 (originator);
//!   authenticator: TXA-22 (authentication person), else TXA-10 (assigned
//!   authenticator) — Practitioners by the XCN rule.
//! * relatesTo (T05–T10 only; an original or a status change has no
//!   parent): TXA-13 parent document → `appends` for addenda (T05/T06),
//!   `replaces` for T09/T10 replacements and for an edit (T07/T08) sent
//!   under a new number; the target is `DocumentReference/<id of the parent by the
//!   same key rule>` — usually an earlier message, so the reference points
//!   outside this bundle — plus the parent's identifier.
//! * docStatus from TXA-17 (table 0271): `DI`, `DO`, `IP`, `IN`, `PA` →
//!   `preliminary`; `AU`, `LA` → `final` (`amended` for an edit, T07/T08);
//!   `CA` or event T11 (cancel) → `entered-in-error`.
//! * status: `entered-in-error` for T11 / TXA-17 `CA` / TXA-19 `CA`;
//!   `superseded` for TXA-19 `OB` (obsolete); else `current`.
//! * subject = Patient; custodian = the member institution;
//!   context.encounter; context.related = the ServiceRequests.
//!
//! # Content (OBX after TXA)
//! * TX / FT / ST / CF lines (OBX-5 repetitions, then consecutive OBX)
//!   joined with line breaks → one attachment, `text/plain;
//!   charset=utf-8`, `data` = base64 of the UTF-8 text.
//! * ED → an attachment of its own with the MIME type from ED-2/ED-3 and
//!   the data (base64 kept, hex and `A` re-encoded; as in ORU).
//! * RP (reference pointer) → attachment `url` = RP-1 (with RP-3/RP-4 as
//!   MIME type); HD → `url` = `urn:oid:` + universal id or an OID
//!   namespace, else the text.
//! * Every attachment gets `creation` = TXA-6 (origination) and `title` =
//!   the TXA-2 text. Notifications without content (T01, T03, T05, T07,
//!   T09, T11) have one attachment with just that metadata (R4 requires
//!   `content`).

use serde_json::{Map, Value};

use super::ctx::Ctx;
use super::encounter;
use super::json::{j, obj};
use super::patient;
use super::results::{attachment, base64_encode, start_order};
use super::types::{
    cwe_table, ei, field_text, floc, pct, practitioner, rep_text, reps, Ident, Parts,
};
use crate::translate::hl7v2::Segment;

pub(crate) fn mdm(ctx: &mut Ctx<'_, '_>) {
    let msg = ctx.msg;
    let segs: Vec<Segment<'_, '_>> = msg.segments().collect();
    let Some(pid_i) = ctx.require(&segs, "PID", "PID segment missing") else {
        return;
    };
    let Some(txa_i) = ctx.require(&segs, "TXA", "TXA segment missing: an MDM message describes one document") else {
        return;
    };
    let pid = segs[pid_i];
    let pd1 = segs.iter().find(|s| s.id() == "PD1");
    let Some(patient) = patient::patient(ctx, &pid, pd1) else {
        return;
    };
    let pv1 = segs.iter().find(|s| s.id() == "PV1");
    let pv2 = segs.iter().find(|s| s.id() == "PV2");
    let mut enc_ref = None;
    if let Some(pv1) = pv1 {
        if let Some(plan) = encounter::plan(ctx, pv1, &patient) {
            enc_ref = encounter::encounter(ctx, &plan, pv1, pv2, None, &patient, Vec::new());
        }
    }
    // orders (before TXA)
    let mut related = Vec::new();
    let mut orc: Option<usize> = None;
    for (i, seg) in segs.iter().enumerate().take(txa_i) {
        match seg.id() {
            "ORC" => orc = Some(i),
            "OBR" => {
                let orc_seg = orc.take().map(|k| segs[k]);
                if seg.field(4).repetition(1).is_blank() {
                    continue;
                }
                if let Some(o) = start_order(
                    ctx,
                    i,
                    seg,
                    orc_seg.as_ref(),
                    patient.clone(),
                    enc_ref.clone(),
                ) {
                    related.extend(o.service_request().cloned());
                }
            }
            _ => {}
        }
    }
    document(ctx, &segs, txa_i, &patient, enc_ref, related);
}

fn doc_ident(ctx: &Ctx<'_, '_>, txa: &Segment<'_, '_>, field: usize) -> Option<Ident> {
    let default = format!("urn:carebridge:{}:document", pct(&ctx.cfg.institution_id));
    txa.field(field)
        .repetitions()
        .next()
        .and_then(|r| ei(ctx, &r, &default))
}

fn is_oid(s: &str) -> bool {
    s.contains('.')
        && s.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn document(
    ctx: &mut Ctx<'_, '_>,
    segs: &[Segment<'_, '_>],
    txa_i: usize,
    patient: &patient::PatientRef,
    enc_ref: Option<Value>,
    related: Vec<Value>,
) {
    let txa = segs[txa_i];
    let trigger = ctx.trigger.clone();
    let Some(ident) = doc_ident(ctx, &txa, 12) else {
        ctx.error(
            101,
            Some(floc(&txa, 12, 1)),
            "TXA-12 (unique document number) is empty: the document cannot be identified",
        );
        return;
    };
    let id = ctx.id("DocumentReference", &format!("doc|{}", ident.key()));
    let kind = txa
        .field(2)
        .repetitions()
        .next()
        .and_then(|r| cwe_table(ctx, &r, "0270"));
    let title = txa
        .field(2)
        .repetitions()
        .next()
        .and_then(|r| r.part(2).or_else(|| r.part(1)));
    let activity = txa.field(4).component(1).raw();
    let start = ctx.datetime(activity, floc(&txa, 4, 1).with_comp(1));
    let date = if start.is_some() {
        ctx.instant(activity, floc(&txa, 4, 1).with_comp(1))
    } else {
        None
    };
    let creation = ctx.datetime(
        txa.field(6).component(1).raw(),
        floc(&txa, 6, 1).with_comp(1),
    );
    let mut authors = Vec::new();
    for f in [5usize, 9] {
        for (n, r) in reps(&txa, f) {
            if let Some(a) = practitioner(ctx, &r, &floc(&txa, f, n)) {
                if !authors.contains(&a) {
                    authors.push(a);
                }
            }
        }
    }
    let mut authenticator = None;
    for f in [22usize, 10] {
        if authenticator.is_some() {
            break;
        }
        if let Some((n, r)) = reps(&txa, f).into_iter().next() {
            authenticator = practitioner(ctx, &r, &floc(&txa, f, n));
        }
    }
    let completion = field_text(&txa, 17).map(|s| s.to_ascii_uppercase());
    let availability = field_text(&txa, 19).map(|s| s.to_ascii_uppercase());
    let cancelled = trigger == "T11"
        || completion.as_deref() == Some("CA")
        || availability.as_deref() == Some("CA");
    let edit = matches!(trigger.as_str(), "T07" | "T08");
    let doc_status = if cancelled {
        Some("entered-in-error")
    } else {
        match completion.as_deref() {
            Some("AU") | Some("LA") if edit => Some("amended"),
            Some("AU") | Some("LA") => Some("final"),
            Some("DI") | Some("DO") | Some("IP") | Some("IN") | Some("PA") => Some("preliminary"),
            _ => None,
        }
    };
    let status = if cancelled {
        "entered-in-error"
    } else if availability.as_deref() == Some("OB") {
        "superseded"
    } else {
        "current"
    };
    let security = field_text(&txa, 18).and_then(|c| {
        let code = match c.to_ascii_uppercase().as_str() {
            "V" => "V",
            "R" => "R",
            "U" => "N",
            _ => return None,
        };
        Some(vec![obj! {
            "coding": vec![
                obj! {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                    "code": code,
                },
            ],
        }])
    });
    let derived = matches!(
        trigger.as_str(),
        "T05" | "T06" | "T07" | "T08" | "T09" | "T10"
    );
    let relates = doc_ident(ctx, &txa, 13)
        .filter(|p| derived && p.key() != ident.key())
        .map(|p| {
            let pid = ctx.id("DocumentReference", &format!("doc|{}", p.key()));
            let code = if matches!(trigger.as_str(), "T05" | "T06") {
                "appends"
            } else {
                "replaces"
            };
            vec![obj! {
                "code": code,
                "target": obj! {
                    "reference": format!("DocumentReference/{pid}"),
                    "identifier": p.json,
                },
            }]
        });

    // content
    let mut contents: Vec<Value> = Vec::new();
    let mut text: Vec<String> = Vec::new();
    for obx in segs.iter().skip(txa_i + 1) {
        if obx.id() != "OBX" {
            continue;
        }
        let vtype = field_text(obx, 2)
            .map(|s| s.to_ascii_uppercase())
            .unwrap_or_default();
        let values = reps(obx, 5);
        match vtype.as_str() {
            "TX" | "FT" | "ST" | "CF" | "" => {
                text.extend(values.iter().filter_map(|(_, r)| rep_text(*r)));
            }
            "ED" => {
                for (_, r) in &values {
                    if let Some(mut a) = attachment(ctx, obx, r) {
                        if let Value::Object(m) = &mut a {
                            // TXA-6 is the document's creation; the OBX-3 text stays the title
                            if let Some(c) = &creation {
                                m.insert("creation".into(), j(c));
                            }
                            if !m.contains_key("title") {
                                if let Some(t) = &title {
                                    m.insert("title".into(), j(t));
                                }
                            }
                        }
                        contents.push(obj! {"attachment": a});
                    }
                }
            }
            "RP" => {
                for (_, r) in &values {
                    let Some(url) = r.part(1) else { continue };
                    let mime = match (r.part(3), r.part(4)) {
                        (Some(t), Some(s)) => Some(format!(
                            "{}/{}",
                            t.to_ascii_lowercase(),
                            s.to_ascii_lowercase()
                        )),
                        _ => None,
                    };
                    contents.push(obj! {"attachment": obj! {
                        "contentType": mime,
                        "url": url,
                        "title": &title,
                        "creation": &creation,
                    }});
                }
            }
            "HD" => {
                for (_, r) in &values {
                    let url = match (r.part(1), r.part(2)) {
                        (_, Some(u)) if is_oid(&u) => format!("urn:oid:{u}"),
                        (_, Some(u)) => u,
                        (Some(n), None) if is_oid(&n) => format!("urn:oid:{n}"),
                        (Some(n), None) => n,
                        (None, None) => continue,
                    };
                    contents.push(obj! {"attachment": obj! {
                        "url": url,
                        "title": &title,
                        "creation": &creation,
                    }});
                }
            }
            other => ctx.warn(
                102,
                Some(floc(obx, 2, 1)),
                format!("OBX value type {other:?} is not document content; not mapped"),
            ),
        }
    }
    if !text.is_empty() {
        let joined = text.join("\n");
        contents.insert(
            0,
            obj! {"attachment": obj! {
                "contentType": "text/plain; charset=utf-8",
                "data": base64_encode(joined.as_bytes()),
                "title": &title,
                "creation": &creation,
            }},
        );
    }
    if contents.is_empty() {
        let t = title
            .clone()
            .unwrap_or_else(|| format!("document {}", ident.value));
        contents.push(obj! {"attachment": obj! {"title": t, "creation": &creation}});
    }

    let mut m = Map::with_capacity(20);
    m.insert("resourceType".into(), j("DocumentReference"));
    m.insert("id".into(), j(&id));
    let mut put = |k: &str, v: Value| super::json::put(&mut m, k, v);
    put("masterIdentifier", ident.json.clone());
    put("status", j(status));
    put("docStatus", j(doc_status));
    put("type", j(kind));
    put("subject", patient.reference.clone());
    put("date", j(date));
    put("author", j(authors));
    put("authenticator", j(authenticator));
    put("custodian", ctx.org_reference());
    put("relatesTo", j(relates));
    put("securityLabel", j(security));
    put("content", j(contents));
    put(
        "context",
        obj! {
            "encounter": enc_ref.map(|e| vec![e]),
            "period": obj! {"start": start},
            "related": related,
        },
    );
    ctx.add("DocumentReference", &id, Value::Object(m));
}
