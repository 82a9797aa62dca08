//! HL7 v2 → FHIR R4 translation: one parsed message in, one FHIR
//! `transaction` Bundle out. Pure functions, no I/O (DESIGN.md "translators
//! never write to the store; they produce a Bundle"); the write pipeline
//! resolves, validates, authorises and stores the Bundle.
//!
//! # API
//! [`translate`]`(msg, raw, cfg, received_at)` → [`Translation`] (bundle,
//! MSH-9 type, MSH-10 control id, warnings) or the list of [`AckError`]s for
//! the ACK (errors first, then warnings). [`InstitutionConfig`] is chosen
//! by the caller from the sending facility (MSH-4): institution id (part of
//! every resource id), organization name, time zone (default
//! `Europe/Berlin`), identifier systems, MRN system. [`SUPPORTED`] lists the
//! message types. [`prune::find_empty`] checks output hygiene.
//!
//! ```
//! use carebridge::translate::hl7v2::map::{translate, InstitutionConfig};
//! use carebridge::translate::hl7v2::Message;
//!
//! let text = "MSH|^~\\&|KIS|KHNORD|CB|REGION|20240305103000||ADT^A01^ADT_A01|K-1|P|2.5.1\r\
//!             PID|1||4711^^^KHNORD^PI~X110411319^^^GKV||M\\X00FC\\ller^J\\X00FC\\rgen||19560314|M\r\
//!             PV1|1|I|KARD^201^2||||||||||||||||V-1|||||||||||||||||||||||||20240305103000\r";
//! let msg = Message::parse(text).unwrap();
//! let cfg = InstitutionConfig::new("klinikum-nord");
//! let t = translate(&msg, text.as_bytes(), &cfg, "2024-03-05T10:31:00+01:00").unwrap();
//! let entries = t.bundle["entry"].as_array().unwrap();
//! let patient = &entries.iter().find(|e| e["resource"]["resourceType"] == "Patient").unwrap()["resource"];
//! assert_eq!(patient["name"][0]["family"], "Müller");
//! assert_eq!(patient["identifier"][1]["system"], "http://fhir.de/sid/gkv/kvid-10");
//! let enc = &entries.iter().find(|e| e["resource"]["resourceType"] == "Encounter").unwrap()["resource"];
//! assert_eq!(enc["period"]["start"], "2024-03-05T10:30:00+01:00");
//! assert_eq!(entries.last().unwrap()["resource"]["resourceType"], "Provenance");
//! ```
//!
//! # Supported
//! ADT A01, A02, A03, A04, A05, A08, A11, A13, A28, A31, A40 (merge),
//! ORU^R01, VXU^V04 and MDM^T01–T11 (HL7 v2.5.1 ch. 3, 7, 4A and 9;
//! versions 2.3–2.8 read alike); segments MSH, EVN, PID, PD1, NK1, PV1,
//! PV2, DG1, PR1, AL1, IN1, MRG, ORC, OBR, OBX, NTE, RXA, RXR, TXA.
//! Resources: Patient, RelatedPerson, Encounter, Condition, Procedure,
//! AllergyIntolerance, Coverage, Observation, DiagnosticReport,
//! ServiceRequest (the order an OBR describes, so OBR-16 has a home),
//! Immunization (VXU: one per RXA, OBX after it as Observations `partOf`
//! it plus funding/eligibility/VIS fields), DocumentReference (MDM: TXA +
//! the OBX content as attachments), Practitioner, Organization (the member
//! institution = the sending facility; insurers; vaccine manufacturers),
//! Location, Provenance. The per-segment
//! rules are in each file's documentation and follow the HL7
//! v2-to-FHIR IG (1.0.0) segment and data type maps, with the deviations
//! noted there. Any other type → error 200 `unsupported message type X^Y`
//! at MSH-9.1; an unsupported event of ADT or ORU → 201 (table 0357
//! "unsupported event code") at MSH-9.2, same text.
//!
//! # Bundle shape
//! `Bundle.type = transaction`; every entry is `PUT <Type>/<id>` with the
//! resource carrying that id and `fullUrl = urn:uuid:<id>`; references
//! between entries are `<Type>/<id>` (ids are known before anything is
//! built). A DG1 with action code `D` becomes `DELETE Condition/<id>`. No
//! resource appears twice (a second mention only completes missing
//! elements). The Provenance is the last entry.
//!
//! # Deterministic ids (business keys)
//! `id = UUIDv5(carebridge namespace, institution_id|Type|key)` ([`ids`]),
//! so re-delivery and re-ordering update the same resources:
//!
//! | resource | key |
//! |---|---|
//! | Patient | first PID-3 identifier `system|value` (PID-2, PID-4 if PID-3 is empty) |
//! | Patient (merged away, A40) | first MRG-1 identifier, same rule |
//! | Encounter | `visit|`PV1-19.1; else `admit|`patient id`|`PV1-44 (as FHIR dateTime); else (A01–A13 only, with a warning) `message|`MSH-10 |
//! | Condition | `id|`DG1-20; else Encounter (or Patient) id + code system + code |
//! | Procedure | `id|`PR1-19; else Encounter (or Patient) id + code + PR1-5 |
//! | AllergyIntolerance | Patient id + AL1-3 code system + code (or text) |
//! | Coverage | Patient id + insurer key + IN1-2 plan + IN1-36 policy number |
//! | Organization (insurer) | `insurer|` + IN1-3 `system|value`, else `insurer|name|`IN1-4 |
//! | Organization (institution) | `institution` |
//! | RelatedPerson | Patient id + NK1-2 name + NK1-3 code (NK1-1 without a name); PID-21: Patient id + `mother|` + identifier |
//! | Practitioner | XCN-1 with its system (XCN-9/XCN-13, config); a name without an id gets no resource, only `{display}` |
//! | Location | facility (PL-4) + the path of levels (`wa=`PL-1, `ro=`PL-2, `bd=`PL-3) |
//! | ServiceRequest, DiagnosticReport | `filler|`OBR-3 (ORC-3) `system|value`, else `placer|`OBR-2 (ORC-2), else `message|`MSH-10`|`OBR-1 with a warning |
//! | Observation (ORU) | order key + `|` + OBX-1 (position if empty, `#n` if repeated) |
//! | Observation (ADT) | Encounter reference (or Patient id) + `|obx|` + OBX-3.1 + `|` + OBX-1 |
//! | Immunization | `filler|`ORC-3, else `placer|`ORC-2 (`system|value`), else `rxa|`patient id`|`RXA-3`|`RXA-5 system`|`code |
//! | Observation (VXU, after RXA) | Immunization id + `|obx|` + OBX-1 (`#n` if repeated) |
//! | Organization (manufacturer) | `manufacturer|` + RXA-17 system`|`code (or `name|`RXA-17.2) |
//! | DocumentReference | `doc|` + TXA-12 `system|value` (edits and status changes keep the number → same resource) |
//! | Provenance | MSH-10 |
//!
//! # Provenance (details in `provenance.rs`)
//! target = every resource written; recorded = `received_at`; activity
//! CREATE (A01, A04, A05, A28, R01) or UPDATE (others); agent = the
//! institution (author) and EVN-5 (enterer); entity (source) = the message:
//! `what.identifier` = `urn:carebridge:hl7v2:control-id|<MSH-10>`, and the
//! **SHA-256 of the raw bytes in `what.display`** (`… sha256:<hex>`) — a
//! display needs no extension definition, so the output stays valid
//! against closed profiles. Translating the same message twice gives
//! byte-identical bundles except `Provenance.recorded`.
//!
//! # Times
//! Every v2 TS/DTM/DT goes through the strict `datetime` module: precision
//! kept (`195603` → `1956-03`), explicit offsets kept, times without an
//! offset get the institution's zone (DST-correct; a local time in the
//! spring-forward gap is an error). Birth dates are FHIR `date` (a birth
//! time also goes into `patient-birthTime`); `issued` is an `instant`.
//!
//! # Errors and warnings
//! Errors (the message is not translated; all of them are collected, each
//! with its ERL location down to component/subcomponent): 100 missing
//! segment (PID; PV1 for A01–A13 except A08; MRG for A40; OBR for ORU),
//! 101 missing required value (PID-3, MSH-10, OBR-4), 102 impossible or
//! malformed date/time, 200/201 unsupported type; VXU: 101 empty RXA-5
//! (vaccine) or RXA-3 (administration time); MDM: 100 missing TXA, 101
//! empty TXA-12 (unique document number). Warnings (translated
//! anyway): 101 no visit/order number, 102 KVNR check digit, non-numeric
//! NM, repeated single values, unsupported OBX value types, 103 unknown
//! administrative sex, 205 A40 merging a patient into itself, 207 ED
//! outside an order.
//!
//! # Output rules
//! No empty resources, arrays, objects or strings, no `null` (except the
//! placeholders JSON requires in `_line`-style arrays) and never the text
//! `"null"`: builders skip absent values (`json.rs`), and every
//! resource is pruned once more when added ([`prune`]). HL7 `""` (explicit
//! null, "delete this value") is read as absent: since every entry is a
//! full PUT, the element disappears from the stored resource, which is what
//! `""` asks for.
//!
//! # Files
//! | file | what |
//! |---|---|
//! | `mod.rs` | API, dispatch, bundle assembly, institution Organization |
//! | `ctx.rs` | bundle under construction, errors, date helpers |
//! | `ids.rs` | UUIDv5 ids |
//! | `types.rs` | data types: CWE, CX, EI, XPN, XAD, XTN, XCN, CNN, PL, NTE; coding and identifier systems |
//! | `patient.rs` | PID, PD1, NK1, PID-21, MRG |
//! | `encounter.rs` | PV1, PV2, status by trigger |
//! | `clinical.rs` | DG1, PR1, AL1, IN1 |
//! | `results.rs` | ORU (ORC, OBR, OBX, NTE), OBX in ADT |
//! | `vxu.rs` | VXU^V04: RXA, RXR, ORC, OBX → Immunization |
//! | `mdm.rs` | MDM^T01–T11: TXA, OBX content → DocumentReference |
//! | `adt.rs` | ADT event flow, A40 merge |
//! | `provenance.rs` | Provenance, SHA-256 |
//! | `json.rs`, `prune.rs` | building and checking JSON |
//!
//! # Limitations
//! * Every entry is a full PUT: a message with a sparse PID (typical for
//!   ORU) replaces richer demographics written by an earlier ADT; a
//!   diagnosis absent from a later A08 is not deleted. Merging partial
//!   updates needs PATCH or pipeline support.
//! * Not mapped: SFT, ROL, GT1, IN2/IN3, ACC, PDA, DB1, ARV, SPM, TQ1,
//!   Z-segments; PID-10/17/22/26 (US-style race/religion/ethnicity);
//!   Specimen; OBX-4 sub-id grouping (no hasMember); NTE after PID/PV1.
//! * ICD-10-GM/OPS codes are copied as sent: the German certainty and side
//!   suffixes (`G`/`V`/`Z`/`A`, `R`/`L`/`B`) are not split into the
//!   de.basisprofil extensions.
//! * MDM notifications without content about an existing document (T03
//!   status change, T07 edit, T11 cancel) are full PUTs too: the stored
//!   content of that document is replaced by the metadata-only
//!   attachment. An addendum or replacement does not rewrite its parent
//!   (`relatesTo` points at it).
//! * VXU: RXA-21 `D` marks the Immunization `entered-in-error` rather than
//!   deleting it; ORC is not mapped to a ServiceRequest.
//! * A40 does not rewrite resources that point at the merged-away Patient.
//! * Provenance ids rely on MSH-10 being unique per sender.

mod adt;
mod clinical;
mod ctx;
mod encounter;
pub mod ids;
mod json;
mod mdm;
mod patient;
mod provenance;
pub mod prune;
mod results;
mod types;
mod vxu;

#[cfg(test)]
mod tests;

use serde_json::{Map, Value};

use crate::translate::hl7v2::{AckError, Location, Message, Severity, Zone};

use ctx::Ctx;
use json::obj;

/// Per-institution settings, chosen by the caller from the sending facility
/// (MSH-4).
#[derive(Clone, Debug)]
pub struct InstitutionConfig {
    /// The member institution's id in carebridge, e.g. `klinikum-nord`;
    /// part of every resource id, so it must never change.
    pub institution_id: String,
    /// `Organization.name` of the institution (default: MSH-4.1).
    pub organization_name: Option<String>,
    /// Zone for v2 times without an offset (default `Europe/Berlin`).
    pub time_zone: Zone,
    /// (assigning authority namespace / universal id, or identifier type
    /// code) → FHIR identifier system; matched case-insensitively.
    pub identifier_systems: Vec<(String, String)>,
    /// System for PID-3 identifiers that name no assigning authority.
    pub mrn_system: String,
    /// The network member (its Organization's logical id, `[[auth.member]]`)
    /// this institution belongs to. When set, every reference to the
    /// institution (`serviceProvider`, `managingOrganization`, the
    /// Provenance agent, …) names `Organization/<member>` — so the member
    /// gets the care relationship and own-records rights of what it sent —
    /// and the translator writes no Organization of its own (the member's
    /// Organization is the network's registry record). Not part of any id.
    pub member: Option<String>,
    /// (institution_id, `Organization/<id>`), computed once; used only
    /// while `institution_id` is still the same (the field is public).
    org_ref: std::sync::OnceLock<(String, String)>,
}

impl InstitutionConfig {
    /// Defaults: zone `Europe/Berlin`, the German identifier systems of
    /// [`InstitutionConfig::german_identifier_systems`], MRN system
    /// `urn:carebridge:<institution_id>:mrn`.
    pub fn new(institution_id: impl Into<String>) -> Self {
        let institution_id = institution_id.into();
        InstitutionConfig {
            mrn_system: format!("urn:carebridge:{institution_id}:mrn"),
            institution_id,
            organization_name: None,
            time_zone: Zone::iana("Europe/Berlin").unwrap_or_else(|_| Zone::utc()),
            identifier_systems: Self::german_identifier_systems(),
            member: None,
            org_ref: std::sync::OnceLock::new(),
        }
    }

    /// `Organization/<id>` of the member institution (`Organization/<member>`
    /// when it is mapped to a network member).
    pub(crate) fn org_ref(&self) -> String {
        if let Some(m) = &self.member {
            return format!("Organization/{m}");
        }
        let make = || {
            ctx::type_id(
                "Organization",
                &ids::resource_id(&self.institution_id, "Organization", "institution"),
            )
        };
        let (inst, r) = self
            .org_ref
            .get_or_init(|| (self.institution_id.clone(), make()));
        if *inst == self.institution_id {
            r.clone()
        } else {
            make()
        }
    }

    /// `KVNR`/`GKV` → `http://fhir.de/sid/gkv/kvid-10`, `IK`/`IKNR` →
    /// `http://fhir.de/sid/arge-ik/iknr`, `LANR` →
    /// `https://fhir.kbv.de/NamingSystem/KBV_NS_Base_ANR`, `BSNR` →
    /// `https://fhir.kbv.de/NamingSystem/KBV_NS_Base_BSNR`.
    pub fn german_identifier_systems() -> Vec<(String, String)> {
        [
            ("KVNR", types::KVNR_SYSTEM),
            ("GKV", types::KVNR_SYSTEM),
            ("IK", "http://fhir.de/sid/arge-ik/iknr"),
            ("IKNR", "http://fhir.de/sid/arge-ik/iknr"),
            ("LANR", "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_ANR"),
            ("BSNR", "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_BSNR"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect()
    }

    /// The configured system for an authority or type code.
    pub fn system_for(&self, key: &str) -> Option<&str> {
        let key = key.trim();
        self.identifier_systems
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, s)| s.as_str())
    }
}

/// The result of translating one message.
#[derive(Clone, Debug)]
pub struct Translation {
    /// A FHIR R4 `Bundle` of type `transaction`.
    pub bundle: Value,
    /// MSH-9.1 and MSH-9.2.
    pub message_type: (String, String),
    /// MSH-10.
    pub control_id: String,
    /// Problems that did not stop the translation (ERR severity W).
    pub warnings: Vec<AckError>,
}

/// The message types and trigger events [`translate`] supports.
pub const SUPPORTED: &[(&str, &str)] = &[
    ("ADT", "A01"),
    ("ADT", "A02"),
    ("ADT", "A03"),
    ("ADT", "A04"),
    ("ADT", "A05"),
    ("ADT", "A08"),
    ("ADT", "A11"),
    ("ADT", "A13"),
    ("ADT", "A28"),
    ("ADT", "A31"),
    ("ADT", "A40"),
    ("ORU", "R01"),
    ("VXU", "V04"),
    ("MDM", "T01"),
    ("MDM", "T02"),
    ("MDM", "T03"),
    ("MDM", "T04"),
    ("MDM", "T05"),
    ("MDM", "T06"),
    ("MDM", "T07"),
    ("MDM", "T08"),
    ("MDM", "T09"),
    ("MDM", "T10"),
    ("MDM", "T11"),
];

/// Translates one parsed message into a transaction Bundle.
///
/// `raw` is the message as received (hashed into the Provenance);
/// `received_at` is a FHIR `instant` (Provenance.recorded). On failure the
/// errors (severity E, with locations and table 0357 codes) are followed by
/// any warnings, ready for [`crate::translate::hl7v2::build_ack`].
pub fn translate(
    msg: &Message<'_>,
    raw: &[u8],
    cfg: &InstitutionConfig,
    received_at: &str,
) -> Result<Translation, Vec<AckError>> {
    let mt = msg.message_type();
    let code = mt.code.trim().to_ascii_uppercase();
    let trigger = mt.trigger.trim().to_ascii_uppercase();
    let shown = format!("{code}^{trigger}");
    let msh9 = Location::field("MSH", 9);
    if !SUPPORTED.iter().any(|(c, t)| *c == code && *t == trigger) {
        let known_code = SUPPORTED.iter().any(|(c, _)| *c == code);
        let (err_code, loc) = if known_code {
            (201, msh9.with_comp(2))
        } else {
            (200, msh9.with_comp(1))
        };
        return Err(vec![AckError::new(err_code, Severity::Error)
            .at(loc)
            .message(format!("unsupported message type {shown}"))]);
    }
    let control_id = types::clean(msg.header().field(10).decoded());
    let Some(control_id) = control_id else {
        return Err(vec![AckError::new(101, Severity::Error)
            .at(Location::field("MSH", 10))
            .message("MSH-10 (message control id) is empty")]);
    };
    if received_at.trim().is_empty() {
        return Err(vec![
            AckError::new(207, Severity::Error).message("received_at is empty")
        ]);
    }

    let mut ctx = Ctx::new(cfg, msg, &trigger, control_id.clone());
    institution(&mut ctx);
    match code.as_str() {
        "ADT" if trigger == "A40" => adt::merge(&mut ctx),
        "ADT" => adt::adt(&mut ctx),
        "VXU" => vxu::vxu(&mut ctx),
        "MDM" => mdm::mdm(&mut ctx),
        _ => results::oru(&mut ctx),
    }
    provenance::add(&mut ctx, raw, received_at, &shown);
    let (entries, mut errors, warnings) = ctx.into_entries();
    if !errors.is_empty() {
        errors.extend(warnings);
        return Err(errors);
    }

    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let url = ctx::type_id(e.rtype, &e.id);
        let mut m = Map::with_capacity(3);
        match e.resource {
            Some(res) => {
                let mut full = String::with_capacity(9 + e.id.len());
                full.push_str("urn:uuid:");
                full.push_str(&e.id);
                m.insert("fullUrl".into(), Value::String(full));
                m.insert("resource".into(), res);
                m.insert("request".into(), obj! {"method": "PUT", "url": url});
            }
            None => {
                m.insert("request".into(), obj! {"method": "DELETE", "url": url});
            }
        }
        out.push(Value::Object(m));
    }
    let bundle = obj! {"resourceType": "Bundle", "type": "transaction", "entry": out};
    Ok(Translation {
        bundle,
        message_type: (code, trigger),
        control_id,
        warnings,
    })
}

/// The member institution's Organization (MSH-4 = the sending facility);
/// none when the institution is mapped to a network member (its registry
/// record is the Organization).
fn institution(ctx: &mut Ctx<'_, '_>) {
    if ctx.cfg.member.is_some() {
        return;
    }
    let msh = ctx.msg.header();
    let hd = msh.field(4).repetition(1);
    let ns = types::comp(hd.component(1));
    let uid = types::comp(hd.component(2));
    let utype = types::comp(hd.component(3));
    let mut identifiers = vec![obj! {
        "system": "urn:carebridge:institution",
        "value": &ctx.cfg.institution_id,
    }];
    if let Some(u) = &uid {
        let t = utype.as_deref().unwrap_or("").to_ascii_uppercase();
        let value = if t == "ISO" {
            format!("urn:oid:{u}")
        } else {
            u.clone()
        };
        if t == "ISO" || t == "UUID" || t == "URI" {
            identifiers.push(obj! {"system": "urn:ietf:rfc:3986", "value": value});
        }
    }
    let id = ctx.org_ref.trim_start_matches("Organization/").to_owned();
    let name = ctx.cfg.organization_name.clone().or(ns).or(uid);
    let res = obj! {
        "resourceType": "Organization",
        "id": &id,
        "identifier": identifiers,
        "active": true,
        "name": name,
    };
    ctx.add("Organization", &id, res);
}
