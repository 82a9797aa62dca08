//! One Provenance per translated message (FHIR R4 `provenance.html`;
//! issue 5 "For every translated record"; the v2-to-FHIR IG's MSH →
//! Provenance map).
//!
//! * `id`: deterministic from institution + MSH-10 (control id), so a
//!   re-delivered message rewrites its own Provenance instead of adding one.
//! * `target`: every resource the bundle writes (DELETE entries excluded).
//! * `occurredDateTime`: EVN-6 (event occurred), else EVN-2 (recorded),
//!   else MSH-7.
//! * `recorded`: the caller's `received_at` (the one value that differs
//!   between two translations of the same message).
//! * `activity`: v3-DataOperation `CREATE` for A01, A04, A05, A28, R01 and
//!   the MDM events that bring a new document (T01/T02 original, T05/T06
//!   addendum, T09/T10 replacement), `UPDATE` for A02, A03, A08, A11, A13,
//!   A31, A40, V04 and the MDM status change, edit and cancel events
//!   (T03/T04, T07/T08, T11).
//! * `agent`: the member institution's Organization, type `author`; EVN-5
//!   (operator) as a Practitioner, type `enterer`, on behalf of the
//!   institution.
//! * `entity` (role `source`) = the message: `what.identifier` is
//!   `urn:carebridge:hl7v2:control-id|<MSH-10>` with the institution as
//!   `assigner` (control ids are unique per sender only), and
//!   **`what.display` carries the SHA-256 of the raw bytes** as
//!   `HL7 v2 <type> message, sha256:<64 hex>`. Decision: a display string
//!   needs no extension definition, so the bundle stays valid against the
//!   base spec and any profile that closes extensions, and the hash is
//!   still one `split("sha256:")` away for audits; a carebridge extension
//!   would be more machine-friendly but needs a published
//!   StructureDefinition first.

use serde_json::Value;

use super::json::obj;

use super::ctx::{reference, Ctx};
use super::types::{floc, practitioner, reps};

/// Lowercase hex SHA-256 (shared with the CSV/JSON import).
pub(crate) use crate::translate::ids::sha256_hex;

pub(crate) fn add(ctx: &mut Ctx<'_, '_>, raw: &[u8], received_at: &str, shown_type: &str) {
    let msg = ctx.msg;
    let mut occurred = None;
    if let Some(evn) = msg.segment("EVN") {
        occurred = ctx.datetime(
            evn.field(6).component(1).raw(),
            floc(&evn, 6, 1).with_comp(1),
        );
        if occurred.is_none() {
            occurred = ctx.datetime(
                evn.field(2).component(1).raw(),
                floc(&evn, 2, 1).with_comp(1),
            );
        }
    }
    if occurred.is_none() {
        let msh = msg.header();
        occurred = ctx.datetime(
            msh.field(7).component(1).raw(),
            floc(&msh, 7, 1).with_comp(1),
        );
    }
    let activity = match ctx.trigger.as_str() {
        "A01" | "A04" | "A05" | "A28" | "R01" | "T01" | "T02" | "T05" | "T06" | "T09" | "T10" => {
            "CREATE"
        }
        _ => "UPDATE",
    };
    let id = ctx.id("Provenance", &ctx.control_id);
    let mut agents = vec![obj! {
        "type": obj! {
            "coding": vec![
                obj! {
                    "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                    "code": "author",
                    "display": "Author",
                },
            ],
        },
        "who": ctx.org_reference(),
    }];
    if let Some(evn) = msg.segment("EVN") {
        for (n, r) in reps(&evn, 5) {
            if let Some(who) = practitioner(ctx, &r, &floc(&evn, 5, n)) {
                agents.push(obj! {
                    "type": obj! {
                        "coding": vec![
                            obj! {
                                "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                "code": "enterer",
                                "display": "Enterer",
                            },
                        ],
                    },
                    "who": who,
                    "onBehalfOf": ctx.org_reference(),
                });
            }
        }
    }
    // Practitioners added just now are targets too.
    let targets: Vec<Value> = ctx
        .entries()
        .iter()
        .filter(|e| e.resource.is_some())
        .map(|e| reference(format!("{}/{}", e.rtype, e.id)))
        .collect();
    let structure = msg
        .message_type()
        .structure
        .map(|s| format!("^{s}"))
        .unwrap_or_default();
    let res = obj! {
        "resourceType": "Provenance",
        "id": &id,
        "target": targets,
        "occurredDateTime": occurred,
        "recorded": received_at,
        "activity": obj! {
            "coding": vec![
                obj! {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                    "code": activity,
                },
            ],
        },
        "agent": agents,
        "entity": vec![
            obj! {
                "role": "source",
                "what": obj! {
                    "identifier": obj! {
                        "system": "urn:carebridge:hl7v2:control-id",
                        "value": &ctx.control_id,
                        "assigner": ctx.org_reference(),
                    },
                    "display": format!("HL7 v2 {shown_type}{structure} message, sha256:{}", sha256_hex(raw)),
                },
            },
        ],
    };
    ctx.add("Provenance", &id, res);
}
