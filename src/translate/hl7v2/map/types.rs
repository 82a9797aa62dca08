//! HL7 v2 data types → FHIR R4 data types (the v2-to-FHIR IG "data type
//! maps": CWE[CodeableConcept], CX[Identifier], XPN[HumanName],
//! XAD[Address], XTN[ContactPoint], XCN[Practitioner], PL[Location],
//! HD[Identifier]), plus value cleaning and coding-system names.
//!
//! # Values
//! Every leaf value is read at the subcomponent level and unescaped
//! (`\F\ \S\ \T\ \R\ \E\ \Xhh\ \.br\`, parser module), so `M\X00FC\ller`
//! and UTF-8 `Müller` give the same text. Leading/trailing white space is
//! trimmed, control characters other than TAB/CR/LF are dropped, and the
//! HL7 explicit null `""` ("delete this value") is treated as absent: the
//! element is simply not written (the PUT of the whole resource then
//! removes an earlier value, which is what `""` asks for).
//!
//! # Coding systems (table 0396 names, CWE-3/CWE-6)
//! `LN` → LOINC, `SCT`/`SNOMEDCT` → SNOMED CT, `I10`/`I10GM`/`ICD-10-GM` →
//! `http://fhir.de/CodeSystem/bfarm/icd-10-gm` (a German gateway: a sender's
//! `I10` is ICD-10-GM), `I10C` → ICD-10-CM, `I9`/`I9C` → ICD-9-CM,
//! `OPS`/`O301` → `http://fhir.de/CodeSystem/bfarm/ops`, `UCUM`, `C4` (CPT),
//! `RXNORM`, `CVX`, `MVX`, `NCIT` (NCI thesaurus), `NDC`, `ATC`, `PZN`, `ISO639` → `urn:ietf:bcp:47`, `HL7nnnn` →
//! `http://terminology.hl7.org/CodeSystem/v2-nnnn`; CWE-14 (coding system
//! OID, v2.7+) → `urn:oid:`. Any other name becomes the institution-local
//! system `urn:carebridge:<institution>:cs:<NAME>` (percent-encoded), so a
//! local code keeps its system name and can never be confused with another
//! institution's code.
//!
//! # Identifier systems (CX-4 / CX-5, XCN-9 / XCN-13, EI-2 / EI-3)
//! 1. `InstitutionConfig::identifier_systems`, matched case-insensitively
//!    against the assigning authority's namespace id, its universal id, then
//!    the identifier type code;
//! 2. an assigning authority given as a universal id: ISO → `urn:oid:`,
//!    UUID → `urn:uuid:`, URI as is;
//! 3. an unmapped assigning authority namespace → the caller's default
//!    system + `:<NAMESPACE>` (e.g. `urn:carebridge:<institution>:mrn:BCBS`)
//!    — deliberately *not* the default itself, so numbers from two
//!    different authorities never collide;
//! 4. no authority at all → the caller's default (`mrn_system` for patients,
//!    `urn:carebridge:<institution>:visit` for visit numbers,
//!    `…:practitioner`, `…:insurer`, `…:placer-order`, `…:filler-order`,
//!    `…:diagnosis`, `…:procedure`, `…:preadmit`).
//!
//! KVNR values (system `http://fhir.de/sid/gkv/kvid-10`) get the identifier
//! type `KVZ10` (de.basisprofil) and their check digit is verified
//! (modulo 10, weights 1-2-1-2…, the letter as its two-digit alphabet
//! position; § 290 SGB V); a wrong one is a warning, the value is kept.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::json::{j, obj};

use super::ctx::Ctx;
use crate::translate::hl7v2::{Component, Location, Repetition, Segment, Subcomponent};

pub(crate) const KVNR_SYSTEM: &str = "http://fhir.de/sid/gkv/kvid-10";
pub(crate) const ICD10GM: &str = "http://fhir.de/CodeSystem/bfarm/icd-10-gm";
pub(crate) const OPS: &str = "http://fhir.de/CodeSystem/bfarm/ops";
pub(crate) const UCUM: &str = "http://unitsofmeasure.org";

// ---------------------------------------------------------------------------
// Text
// ---------------------------------------------------------------------------

/// Trims, drops control characters (except TAB/CR/LF) and maps empty and
/// `""` to `None`.
pub(crate) fn clean(s: Cow<'_, str>) -> Option<String> {
    let t = s.trim();
    if t.is_empty() || t == "\"\"" {
        return None;
    }
    if t.bytes()
        .any(|b| b < 0x20 && b != b'\t' && b != b'\n' && b != b'\r')
        || t.contains('\u{7f}')
    {
        let s: String = t
            .chars()
            .filter(|&c| !(c.is_control() && c != '\t' && c != '\n' && c != '\r'))
            .collect();
        let s = s.trim();
        return (!s.is_empty()).then(|| s.to_owned());
    }
    Some(t.to_owned())
}

pub(crate) fn sub(s: Subcomponent<'_>) -> Option<String> {
    if s.is_null() {
        return None;
    }
    clean(s.decoded())
}

/// The text of a primitive component (its first subcomponent).
pub(crate) fn comp(c: Component<'_>) -> Option<String> {
    sub(c.subcomponent(1))
}

/// Positional access to the parts of a composite value, whether it is a
/// field repetition (parts = components) or a component (parts =
/// subcomponents, for a type nested in a component).
pub(crate) trait Parts<'a>: Copy {
    fn raw_part(&self, n: usize) -> &'a str;
    fn part(&self, n: usize) -> Option<String>;
    /// The location of part `n` below `base`.
    fn loc(&self, base: &Location, n: usize) -> Location;
    fn is_blank(&self) -> bool;
}

impl<'a> Parts<'a> for Repetition<'a> {
    fn raw_part(&self, n: usize) -> &'a str {
        self.component(n).raw()
    }
    fn part(&self, n: usize) -> Option<String> {
        comp(self.component(n))
    }
    fn loc(&self, base: &Location, n: usize) -> Location {
        base.clone().with_comp(n)
    }
    fn is_blank(&self) -> bool {
        self.raw().trim().is_empty() || self.is_null()
    }
}

impl<'a> Parts<'a> for Component<'a> {
    fn raw_part(&self, n: usize) -> &'a str {
        self.subcomponent(n).raw()
    }
    fn part(&self, n: usize) -> Option<String> {
        sub(self.subcomponent(n))
    }
    fn loc(&self, base: &Location, n: usize) -> Location {
        base.clone().with_sub(n)
    }
    fn is_blank(&self) -> bool {
        self.raw().trim().is_empty() || self.is_null()
    }
}

/// First repetition, first component, first subcomponent of a field.
pub(crate) fn field_text(seg: &Segment<'_, '_>, n: usize) -> Option<String> {
    comp(seg.field(n).component(1))
}

/// A whole field repetition as text (for ST/TX/FT values: delimiters that
/// were escaped come back as characters).
pub(crate) fn rep_text(r: Repetition<'_>) -> Option<String> {
    if r.is_null() {
        return None;
    }
    clean(r.decoded())
}

/// The location of field `n` (repetition `rep`) of a segment.
pub(crate) fn floc(seg: &Segment<'_, '_>, n: usize, rep: usize) -> Location {
    let l = seg.location(Some(n));
    if rep > 1 {
        l.with_rep(rep)
    } else {
        l
    }
}

/// The non-blank repetitions of field `n`, with their 1-based numbers.
pub(crate) fn reps<'a>(seg: &Segment<'_, 'a>, n: usize) -> Vec<(usize, Repetition<'a>)> {
    seg.field(n)
        .repetitions()
        .enumerate()
        .filter(|(_, r)| !r.is_blank())
        .map(|(i, r)| (i + 1, r))
        .collect()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn pct(s: &str) -> Cow<'_, str> {
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
}

fn is_oid(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').count() > 1
        && s.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

// ---------------------------------------------------------------------------
// Numbers
// ---------------------------------------------------------------------------

/// A v2 NM value as a JSON-number literal: optional sign, digits, optional
/// decimal point. `+5` → `5`, `.5` → `0.5`, `5.` → `5`, `007` → `7`;
/// trailing fraction zeros are kept (they carry precision). `None` if it is
/// not a number.
pub(crate) fn normalize_number(s: &str) -> Option<String> {
    let s = s.trim();
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (int, frac) = match body.find('.') {
        Some(i) => (&body[..i], &body[i + 1..]),
        None => (body, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int = int.trim_start_matches('0');
    let mut out = String::with_capacity(s.len() + 2);
    if neg {
        out.push('-');
    }
    out.push_str(if int.is_empty() { "0" } else { int });
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    Some(out)
}

/// A JSON number from a normalized literal (exact with serde_json's
/// `arbitrary_precision`).
pub(crate) fn number(lit: &str) -> Option<Value> {
    lit.parse::<serde_json::Number>().ok().map(Value::Number)
}

// ---------------------------------------------------------------------------
// Coding systems
// ---------------------------------------------------------------------------

/// The FHIR system URI for a v2 coding-system name (table 0396).
pub(crate) fn code_system(ctx: &Ctx<'_, '_>, name: &str) -> String {
    let up = name.trim().to_ascii_uppercase();
    let known = match up.as_str() {
        "LN" | "LOINC" => "http://loinc.org",
        "SCT" | "SNOMEDCT" | "SNOMED-CT" | "SNOMED" | "SNOMED CT" => "http://snomed.info/sct",
        "I10" | "I10GM" | "I10-GM" | "ICD10GM" | "ICD-10-GM" | "ICD10-GM" | "ICD10" | "ICD-10" => {
            ICD10GM
        }
        "I10C" | "ICD10CM" | "ICD-10-CM" => "http://hl7.org/fhir/sid/icd-10-cm",
        "I10P" | "ICD10PCS" | "ICD-10-PCS" => "http://www.cms.gov/Medicare/Coding/ICD10",
        "I9" | "I9C" | "I9CM" | "ICD9" | "ICD9CM" | "ICD-9-CM" => {
            "http://hl7.org/fhir/sid/icd-9-cm"
        }
        "OPS" | "O301" | "OPS301" | "OPS-301" => OPS,
        "UCUM" => UCUM,
        "C4" | "C5" | "CPT" | "CPT4" | "CPT-4" => "http://www.ama-assn.org/go/cpt",
        "RXNORM" => "http://www.nlm.nih.gov/research/umls/rxnorm",
        "CVX" => "http://hl7.org/fhir/sid/cvx",
        "MVX" => "http://hl7.org/fhir/sid/mvx",
        "NCIT" | "NCI" => "http://ncimeta.nci.nih.gov",
        "NDC" => "http://hl7.org/fhir/sid/ndc",
        "ATC" | "WC" => "http://www.whocc.no/atc",
        "PZN" => "http://fhir.de/CodeSystem/ifa/pzn",
        "ISO3166_1" | "ISO3166-1" | "ISO3166" => "urn:iso:std:iso:3166",
        "ISO4217" => "urn:iso:std:iso:4217",
        "ISO639" | "ISO639-1" | "ISO639-2" | "ISO 639" => "urn:ietf:bcp:47",
        _ => {
            if let Some(d) = up.strip_prefix("HL7") {
                if d.len() == 4 && d.bytes().all(|b| b.is_ascii_digit()) {
                    return format!("http://terminology.hl7.org/CodeSystem/v2-{d}");
                }
            }
            if is_oid(name.trim()) {
                return format!("urn:oid:{}", name.trim());
            }
            return format!(
                "urn:carebridge:{}:cs:{}",
                pct(&ctx.cfg.institution_id),
                pct(name.trim())
            );
        }
    };
    known.to_owned()
}

fn coding(system: Option<String>, code: String, display: Option<String>) -> Value {
    let mut m = Map::with_capacity(3);
    if let Some(s) = system {
        m.insert("system".into(), Value::String(s));
    }
    m.insert("code".into(), Value::String(code));
    if let Some(d) = display {
        m.insert("display".into(), Value::String(d));
    }
    Value::Object(m)
}

/// CWE / CE / CNE / CF → CodeableConcept. Parts: 1 code, 2 text, 3 system,
/// 4–6 alternate, 9 original text, 14 system OID (v2.7+).
pub(crate) fn cwe<'a, P: Parts<'a>>(ctx: &Ctx<'_, '_>, p: &P) -> Option<Value> {
    if p.is_blank() {
        return None;
    }
    let mut codings = Vec::new();
    let display = p.part(2);
    if let Some(code) = p.part(1) {
        let sys = match p.part(3) {
            Some(s) => Some(code_system(ctx, &s)),
            None => p
                .part(14)
                .filter(|o| is_oid(o))
                .map(|o| format!("urn:oid:{o}")),
        };
        codings.push(coding(sys, code, display.clone()));
    }
    if let Some(code) = p.part(4) {
        let sys = match p.part(6) {
            Some(s) => Some(code_system(ctx, &s)),
            None => p
                .part(17)
                .filter(|o| is_oid(o))
                .map(|o| format!("urn:oid:{o}")),
        };
        codings.push(coding(sys, code, p.part(5)));
    }
    let text = p
        .part(9)
        .or(if codings.is_empty() { display } else { None });
    if codings.is_empty() && text.is_none() {
        return None;
    }
    let mut m = Map::with_capacity(2);
    if !codings.is_empty() {
        m.insert("coding".into(), Value::Array(codings));
    }
    if let Some(t) = text {
        m.insert("text".into(), Value::String(t));
    }
    Some(Value::Object(m))
}

/// A plain code from a v2 table as a CodeableConcept (`system` = the v2
/// table's code system), with an optional display.
pub(crate) fn v2_table_concept(table: &str, code: &str, display: Option<String>) -> Value {
    obj! {
        "coding": vec![
            coding(Some(format!("http://terminology.hl7.org/CodeSystem/v2-{table}")), code.to_owned(), display),
        ],
    }
}

/// A CodeableConcept for a coded v2 field whose values come from a v2
/// table: when the sender names no system, the table's system is used.
pub(crate) fn cwe_table<'a, P: Parts<'a>>(ctx: &Ctx<'_, '_>, p: &P, table: &str) -> Option<Value> {
    if p.part(3).is_none() && p.part(14).is_none() {
        if let Some(code) = p.part(1) {
            let mut v = v2_table_concept(table, &code, p.part(2));
            if let Some(t) = p.part(9) {
                v["text"] = Value::String(t);
            }
            return Some(v);
        }
    }
    cwe(ctx, p)
}

// ---------------------------------------------------------------------------
// Identifiers
// ---------------------------------------------------------------------------

/// Resolves an identifier system (see the module doc); `default` is the
/// caller's system for values without an authority.
pub(crate) fn resolve_system(
    ctx: &Ctx<'_, '_>,
    namespace: Option<&str>,
    universal_id: Option<&str>,
    universal_type: Option<&str>,
    id_type: Option<&str>,
    default: &str,
) -> String {
    resolve_system_opt(
        ctx,
        namespace,
        universal_id,
        universal_type,
        id_type,
        default,
    )
    .unwrap_or_else(|| default.to_owned())
}

fn resolve_system_opt(
    ctx: &Ctx<'_, '_>,
    namespace: Option<&str>,
    universal_id: Option<&str>,
    universal_type: Option<&str>,
    id_type: Option<&str>,
    default: &str,
) -> Option<String> {
    for key in [namespace, universal_id, id_type].into_iter().flatten() {
        if let Some(s) = ctx.cfg.system_for(key) {
            return Some(s.to_owned());
        }
    }
    if let Some(uid) = universal_id {
        let t = universal_type.unwrap_or("").to_ascii_uppercase();
        if t == "ISO" || (t.is_empty() && is_oid(uid)) {
            return Some(format!("urn:oid:{uid}"));
        }
        if t == "UUID" {
            return Some(format!("urn:uuid:{}", uid.to_ascii_lowercase()));
        }
        if t == "URI"
            || uid.starts_with("http://")
            || uid.starts_with("https://")
            || uid.starts_with("urn:")
        {
            return Some(uid.to_owned());
        }
    }
    namespace.map(|ns| format!("{default}:{}", pct(ns)))
}

/// KVNR (unchangeable part, 10 characters) check digit, § 290 SGB V.
pub(crate) fn kvnr_valid(v: &str) -> bool {
    let b = v.as_bytes();
    if b.len() != 10 || !b[0].is_ascii_uppercase() || !b[1..].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let letter = b[0] - b'A' + 1;
    let mut digits = [0u8; 10];
    digits[0] = letter / 10;
    digits[1] = letter % 10;
    for i in 0..8 {
        digits[i + 2] = b[i + 1] - b'0';
    }
    let sum: u32 = digits
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            let p = d as u32 * if i % 2 == 0 { 1 } else { 2 };
            p / 10 + p % 10
        })
        .sum();
    sum % 10 == (b[9] - b'0') as u32
}

/// A resolved identifier: its system (always set), value and FHIR JSON.
pub(crate) struct Ident {
    pub system: String,
    pub value: String,
    pub json: Value,
}

impl Ident {
    pub fn key(&self) -> String {
        format!("{}|{}", self.system, self.value)
    }
}

/// CX (field repetition) → Identifier. `default_system` is used when
/// nothing names an authority. CX-7/CX-8 (effective/expiration) → period.
pub(crate) fn cx(
    ctx: &mut Ctx<'_, '_>,
    r: &Repetition<'_>,
    base: &Location,
    default_system: &str,
) -> Option<Ident> {
    let value = r.part(1)?;
    let hd = r.component(4);
    let ns = hd.part(1);
    let uid = hd.part(2);
    let utype = hd.part(3);
    let id_type = r.part(5);
    let system = resolve_system(
        ctx,
        ns.as_deref(),
        uid.as_deref(),
        utype.as_deref(),
        id_type.as_deref(),
        default_system,
    );
    let mut json = Map::with_capacity(4);
    if system == KVNR_SYSTEM {
        json.insert(
            "type".into(),
            obj! {
                "coding": vec![
                    obj! {
                        "system": "http://fhir.de/CodeSystem/identifier-type-de-basis",
                        "code": "KVZ10",
                    },
                ],
            },
        );
        if !kvnr_valid(&value) {
            ctx.warn(
                102,
                Some(r.loc(base, 1)),
                format!(
                    "KVNR {value:?} has a wrong format or check digit (§ 290 SGB V); kept as sent"
                ),
            );
        }
    } else if let Some(t) = &id_type {
        json.insert("type".into(), v2_table_concept("0203", t, None));
    }
    json.insert("system".into(), Value::String(system.clone()));
    json.insert("value".into(), Value::String(value.clone()));
    let start = ctx.date(r.raw_part(7), r.loc(base, 7));
    let end = ctx.date(r.raw_part(8), r.loc(base, 8));
    if start.is_some() || end.is_some() {
        json.insert("period".into(), obj! {"start": start, "end": end});
    }
    Some(Ident {
        system,
        value,
        json: Value::Object(json),
    })
}

/// EI (entity identifier: 1 id, 2 namespace, 3 universal id, 4 type) →
/// Identifier, with `default_system` when no authority is named.
pub(crate) fn ei<'a, P: Parts<'a>>(
    ctx: &Ctx<'_, '_>,
    p: &P,
    default_system: &str,
) -> Option<Ident> {
    let value = p.part(1)?;
    let ns = p.part(2);
    let uid = p.part(3);
    let ut = p.part(4);
    let system = resolve_system(
        ctx,
        ns.as_deref(),
        uid.as_deref(),
        ut.as_deref(),
        None,
        default_system,
    );
    let json = obj! {"system": &system, "value": &value};
    Some(Ident {
        system,
        value,
        json,
    })
}

// ---------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------

/// Where the name parts sit: XPN (1-based from 1) or XCN (shifted by one).
pub(crate) struct NameLayout {
    pub family: usize,
    pub given: usize,
    pub middle: usize,
    pub suffix: usize,
    pub prefix: usize,
    pub degree: usize,
    pub name_type: usize,
    pub validity: usize,
    pub effective: usize,
    pub expiration: usize,
    pub professional_suffix: usize,
}

pub(crate) const XPN: NameLayout = NameLayout {
    family: 1,
    given: 2,
    middle: 3,
    suffix: 4,
    prefix: 5,
    degree: 6,
    name_type: 7,
    validity: 10,
    effective: 12,
    expiration: 13,
    professional_suffix: 14,
};

pub(crate) const XCN: NameLayout = NameLayout {
    family: 2,
    given: 3,
    middle: 4,
    suffix: 5,
    prefix: 6,
    degree: 7,
    name_type: 10,
    validity: 17,
    effective: 19,
    expiration: 20,
    professional_suffix: 21,
};

/// Table 0200 → name-use (v2-to-FHIR IG map, plus `B` birth name →
/// `maiden`, the German "Geburtsname" convention).
fn name_use(code: &str) -> Option<&'static str> {
    Some(match code {
        "L" => "official",
        "D" => "usual",
        "M" | "B" => "maiden",
        "N" => "nickname",
        "TEMP" | "T" => "temp",
        "BAD" => "old",
        "A" | "S" => "anonymous",
        _ => return None,
    })
}

/// XPN / XCN (field repetition) → HumanName.
pub(crate) fn human_name(
    ctx: &mut Ctx<'_, '_>,
    r: &Repetition<'_>,
    base: &Location,
    l: &NameLayout,
) -> Option<Value> {
    let fam = r.component(l.family);
    let surname = fam.part(1);
    let own_prefix = fam.part(2);
    let family = match (&own_prefix, &surname) {
        (Some(p), Some(s)) => Some(format!("{p} {s}")),
        (None, s) => s.clone(),
        (Some(_), None) => None,
    };
    let given: Vec<String> = [r.part(l.given), r.part(l.middle)]
        .into_iter()
        .flatten()
        .collect();
    if family.is_none() && given.is_empty() {
        return None;
    }
    let mut m = Map::with_capacity(6);
    if let Some(u) = r.part(l.name_type).as_deref().and_then(name_use) {
        m.insert("use".into(), Value::String(u.into()));
    }
    if let Some(f) = family {
        m.insert("family".into(), Value::String(f));
        if let (Some(p), Some(s)) = (own_prefix, surname) {
            m.insert(
                "_family".into(),
                obj! {
                    "extension": vec![
                        obj! {
                            "url": "http://hl7.org/fhir/StructureDefinition/humanname-own-prefix",
                            "valueString": p,
                        },
                        obj! {
                            "url": "http://hl7.org/fhir/StructureDefinition/humanname-own-name",
                            "valueString": s,
                        },
                    ],
                },
            );
        }
    }
    if !given.is_empty() {
        m.insert("given".into(), j(given));
    }
    if let Some(p) = r.part(l.prefix) {
        m.insert("prefix".into(), j(vec![p]));
    }
    let suffix: Vec<String> = [
        r.part(l.suffix),
        r.part(l.degree),
        r.part(l.professional_suffix),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !suffix.is_empty() {
        m.insert("suffix".into(), j(suffix));
    }
    let (mut start, mut end) = (
        ctx.datetime(r.raw_part(l.effective), r.loc(base, l.effective)),
        ctx.datetime(r.raw_part(l.expiration), r.loc(base, l.expiration)),
    );
    if start.is_none() && end.is_none() {
        let dr = r.component(l.validity);
        start = ctx.datetime(dr.raw_part(1), dr.loc(&r.loc(base, l.validity), 1));
        end = ctx.datetime(dr.raw_part(2), dr.loc(&r.loc(base, l.validity), 2));
    }
    if start.is_some() || end.is_some() {
        m.insert("period".into(), obj! {"start": start, "end": end});
    }
    Some(Value::Object(m))
}

/// A one-line rendering of a name for `Reference.display`.
pub(crate) fn name_display(name: &Value) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for key in ["prefix", "given"] {
        if let Some(a) = name.get(key).and_then(Value::as_array) {
            parts.extend(a.iter().filter_map(Value::as_str));
        }
    }
    if let Some(f) = name.get("family").and_then(Value::as_str) {
        parts.push(f);
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

// ---------------------------------------------------------------------------
// Addresses and telecom
// ---------------------------------------------------------------------------

/// XAD (field repetition) → Address. SAD street (1.1) and other designation
/// (2) → `line`; street name (1.2) and house number (1.3) also as the
/// ISO 21090 ADXP extensions the German base profile uses; 3 city, 4 state,
/// 5 postal code, 6 country, 9 county → district, 7 type → use/type,
/// 13/14 (or the 12 DR) → period.
pub(crate) fn address(ctx: &mut Ctx<'_, '_>, r: &Repetition<'_>, base: &Location) -> Option<Value> {
    let sad = r.component(1);
    let street = sad.part(1);
    let street_name = sad.part(2);
    let house = sad.part(3);
    let line1 = street.clone().or_else(|| match (&street_name, &house) {
        (Some(s), Some(h)) => Some(format!("{s} {h}")),
        (Some(s), None) => Some(s.clone()),
        (None, Some(h)) => Some(h.clone()),
        (None, None) => None,
    });
    let mut line: Vec<Value> = Vec::new();
    let mut line_ext: Vec<Value> = Vec::new();
    if let Some(l1) = line1 {
        line.push(Value::String(l1));
        let mut ext = Vec::new();
        if let Some(s) = &street_name {
            ext.push(obj! {
                "url": "http://hl7.org/fhir/StructureDefinition/iso21090-ADXP-streetName",
                "valueString": s,
            });
        }
        if let Some(h) = &house {
            ext.push(obj! {
                "url": "http://hl7.org/fhir/StructureDefinition/iso21090-ADXP-houseNumber",
                "valueString": h,
            });
        }
        line_ext.push(if ext.is_empty() {
            Value::Null
        } else {
            obj! {"extension": ext}
        });
    }
    if let Some(o) = r.part(2) {
        line.push(Value::String(o));
        line_ext.push(Value::Null);
    }
    let (usage, kind) = match r.part(7).as_deref().map(str::to_ascii_uppercase).as_deref() {
        Some("H") | Some("P") | Some("RH") | Some("L") => (Some("home"), None),
        Some("B") | Some("O") => (Some("work"), None),
        Some("C") | Some("V") => (Some("temp"), None),
        Some("BA") => (Some("old"), None),
        Some("BI") => (Some("billing"), None),
        Some("M") => (None, Some("postal")),
        Some("SH") => (None, Some("physical")),
        _ => (None, None),
    };
    let mut start = ctx.datetime(r.raw_part(13), r.loc(base, 13));
    let mut end = ctx.datetime(r.raw_part(14), r.loc(base, 14));
    if start.is_none() && end.is_none() {
        let dr = r.component(12);
        start = ctx.datetime(dr.raw_part(1), dr.loc(&r.loc(base, 12), 1));
        end = ctx.datetime(dr.raw_part(2), dr.loc(&r.loc(base, 12), 2));
    }
    let city = r.part(3);
    let state = r.part(4);
    let postal = r.part(5);
    let country = r.part(6);
    let district = r.part(9);
    if line.is_empty() && city.is_none() && postal.is_none() && country.is_none() && state.is_none()
    {
        return None;
    }
    let has_line_ext = line_ext.iter().any(|v| !v.is_null());
    let mut m = Map::with_capacity(10);
    m.insert("use".into(), j(usage));
    m.insert("type".into(), j(kind));
    if !line.is_empty() {
        m.insert("line".into(), Value::Array(line));
        if has_line_ext {
            // `_line` must line up with `line`; null marks "no extension".
            m.insert("_line".into(), Value::Array(line_ext));
        }
    }
    m.insert("city".into(), j(city));
    m.insert("district".into(), j(district));
    m.insert("state".into(), j(state));
    m.insert("postalCode".into(), j(postal));
    m.insert("country".into(), j(country));
    if start.is_some() || end.is_some() {
        m.insert("period".into(), obj! {"start": start, "end": end});
    }
    // Drop nulls here: `_line` keeps its nulls as placeholders.
    m.retain(|_, v| !v.is_null());
    Some(Value::Object(m))
}

/// XTN (field repetition) → ContactPoint. 2 use (table 0201), 3 equipment
/// (table 0202), 4 e-mail, 5–8 country/area/local/extension, 12
/// unformatted, 1 (the pre-2.5 formatted number) as a last resort.
pub(crate) fn contact_point(
    r: &Repetition<'_>,
    default_use: Option<&'static str>,
) -> Option<Value> {
    let use_code = r.part(2).map(|s| s.to_ascii_uppercase());
    let equip = r.part(3).map(|s| s.to_ascii_uppercase());
    let email = r.part(4);
    let is_email = matches!(equip.as_deref(), Some("INTERNET") | Some("X.400"))
        || use_code.as_deref() == Some("NET");
    let (system, value) = if is_email {
        let v = email.or_else(|| r.part(1))?;
        if v.contains('@') {
            ("email", v)
        } else if v.contains("://") || v.starts_with("www.") {
            ("url", v)
        } else {
            ("other", v)
        }
    } else {
        let composed = {
            let mut s = String::new();
            if let Some(c) = r.part(5) {
                s.push('+');
                s.push_str(c.trim_start_matches('+'));
                s.push(' ');
            }
            if let Some(a) = r.part(6) {
                s.push_str(&a);
                s.push(' ');
            }
            if let Some(l) = r.part(7) {
                s.push_str(&l);
            }
            let s = s.trim().to_owned();
            if r.part(7).is_some() {
                let mut s = s;
                if let Some(x) = r.part(8) {
                    s.push_str(" ext. ");
                    s.push_str(&x);
                }
                Some(s)
            } else {
                None
            }
        };
        let v = composed
            .or_else(|| r.part(12))
            .or_else(|| r.part(1))
            .or(email.clone())?;
        let sys = match equip.as_deref() {
            Some("FX") => "fax",
            Some("BP") => "pager",
            _ if use_code.as_deref() == Some("BPN") => "pager",
            _ if r.part(7).is_none()
                && r.part(12).is_none()
                && r.part(1).is_none()
                && email.is_some() =>
            {
                "email"
            }
            _ => "phone",
        };
        (sys, v)
    };
    let usage = match (use_code.as_deref(), equip.as_deref()) {
        (_, Some("CP")) => Some("mobile"),
        (Some("PRN") | Some("ORN") | Some("VHN"), _) => Some("home"),
        (Some("WPN"), _) => Some("work"),
        (Some("EMR") | Some("ASN") | Some("BPN"), _) => None,
        _ => default_use,
    };
    Some(obj! {"system": system, "value": value, "use": usage})
}

// ---------------------------------------------------------------------------
// Practitioners
// ---------------------------------------------------------------------------

/// XCN (field repetition) → a reference to a Practitioner. With an id
/// (XCN-1) the Practitioner is added to the bundle (id from its identifier
/// system|value); with only a name the reference is display-only, because a
/// name alone cannot identify a person (two "Dr. Müller" must not become one
/// resource).
pub(crate) fn practitioner(
    ctx: &mut Ctx<'_, '_>,
    r: &Repetition<'_>,
    base: &Location,
) -> Option<Value> {
    if r.is_blank() {
        return None;
    }
    let name = human_name(ctx, r, base, &XCN);
    let display = name.as_ref().and_then(name_display);
    let Some(value) = r.part(1) else {
        return display.map(|d| obj! {"display": d});
    };
    let hd = r.component(9);
    let default = format!(
        "urn:carebridge:{}:practitioner",
        pct(&ctx.cfg.institution_id)
    );
    let system = resolve_system(
        ctx,
        hd.part(1).as_deref(),
        hd.part(2).as_deref(),
        hd.part(3).as_deref(),
        r.part(13).as_deref(),
        &default,
    );
    let id = ctx.id("Practitioner", &format!("{system}|{value}"));
    let mut ident = Map::new();
    if let Some(t) = r.part(13) {
        ident.insert("type".into(), v2_table_concept("0203", &t, None));
    }
    ident.insert("system".into(), Value::String(system));
    ident.insert("value".into(), Value::String(value));
    let res = obj! {
        "resourceType": "Practitioner",
        "id": &id,
        "identifier": vec![Value::Object(ident)],
        "name": name.map(|n| vec![n]),
    };
    let mut reference = ctx.add("Practitioner", &id, res)?;
    if let Some(d) = display {
        reference["display"] = Value::String(d);
    }
    Some(reference)
}

/// CNN (a component whose subcomponents are 1 id, 2 family, 3 given,
/// 4 middle, 5 suffix, 6 prefix, 7 degree, 9 namespace, 10 universal id,
/// 11 type; used in OBR-32…35) → a Practitioner reference like
/// [`practitioner`].
pub(crate) fn practitioner_cnn(ctx: &mut Ctx<'_, '_>, c: &Component<'_>) -> Option<Value> {
    if c.is_blank() {
        return None;
    }
    let family = c.part(2);
    let given: Vec<String> = [c.part(3), c.part(4)].into_iter().flatten().collect();
    let suffix: Vec<String> = [c.part(5), c.part(7)].into_iter().flatten().collect();
    let name = if family.is_some() || !given.is_empty() {
        Some(obj! {
            "family": family,
            "given": given,
            "prefix": c.part(6).map(|p| vec![p]),
            "suffix": suffix,
        })
    } else {
        None
    };
    let display = name.as_ref().and_then(name_display);
    let Some(value) = c.part(1) else {
        return display.map(|d| obj! {"display": d});
    };
    let default = format!(
        "urn:carebridge:{}:practitioner",
        pct(&ctx.cfg.institution_id)
    );
    let system = resolve_system(
        ctx,
        c.part(9).as_deref(),
        c.part(10).as_deref(),
        c.part(11).as_deref(),
        None,
        &default,
    );
    let id = ctx.id("Practitioner", &format!("{system}|{value}"));
    let res = obj! {
        "resourceType": "Practitioner",
        "id": &id,
        "identifier": vec![obj! {"system": system, "value": value}],
        "name": name.map(|n| vec![n]),
    };
    let mut reference = ctx.add("Practitioner", &id, res)?;
    if let Some(d) = display {
        reference["display"] = Value::String(d);
    }
    Some(reference)
}

// ---------------------------------------------------------------------------
// Locations
// ---------------------------------------------------------------------------

/// PL (field repetition) → Location resources for each level given (point
/// of care `wa`, room `ro`, bed `bd`), linked by `partOf`; returns a
/// reference to the most specific one. Keys: facility (PL-4) + the path of
/// levels, so "Bed 1" of two rooms are two beds. Building (PL-7), floor
/// (PL-8) and description (PL-9) go into the description text.
pub(crate) fn location(ctx: &mut Ctx<'_, '_>, r: &Repetition<'_>) -> Option<Value> {
    if r.is_blank() {
        return None;
    }
    let facility = r.component(4).part(1).unwrap_or_default();
    let levels = [
        (r.component(1).part(1), "wa", "Ward"),
        (r.component(2).part(1), "ro", "Room"),
        (r.component(3).part(1), "bd", "Bed"),
    ];
    let mut key = facility.clone();
    let mut parent: Option<Value> = None;
    let mut path: Vec<String> = Vec::new();
    let extra: Vec<String> = [r.part(7), r.part(8), r.part(9)]
        .into_iter()
        .flatten()
        .collect();
    let deepest = levels.iter().rposition(|(v, _, _)| v.is_some());
    let deepest = deepest?;
    for (i, (value, code, display)) in levels.iter().enumerate() {
        let Some(v) = value else { continue };
        key.push('|');
        key.push_str(code);
        key.push('=');
        key.push_str(v);
        path.push(v.clone());
        let id = ctx.id("Location", &key);
        let description = if i == deepest && !extra.is_empty() {
            Some(format!("{} ({})", path.join(" / "), extra.join(", ")))
        } else {
            Some(path.join(" / "))
        };
        let res = obj! {
            "resourceType": "Location",
            "id": &id,
            "identifier": vec![
                obj! {
                    "system": format!("urn:carebridge:{}:location", pct(&ctx.cfg.institution_id)),
                    "value": key.trim_start_matches('|'),
                },
            ],
            "status": "active",
            "name": v,
            "description": description,
            "mode": "instance",
            "physicalType": obj! {
                "coding": vec![
                    obj! {
                        "system": "http://terminology.hl7.org/CodeSystem/location-physical-type",
                        "code": code,
                        "display": display,
                    },
                ],
            },
            "managingOrganization": ctx.org_reference(),
            "partOf": parent.take(),
        };
        parent = ctx.add("Location", &id, res);
    }
    parent
}

// ---------------------------------------------------------------------------
// Notes
// ---------------------------------------------------------------------------

/// The NTE segments directly after segment index `i` → Annotations
/// (NTE-3 comment lines joined with line breaks, NTE-5 author, NTE-6 time).
pub(crate) fn notes_after(ctx: &mut Ctx<'_, '_>, i: usize) -> Vec<Value> {
    let msg = ctx.msg;
    let mut out = Vec::new();
    for seg in msg.segments().skip(i + 1) {
        if seg.id() != "NTE" {
            break;
        }
        let lines: Vec<String> = seg.field(3).repetitions().filter_map(rep_text).collect();
        if lines.is_empty() {
            continue;
        }
        let author = seg.field(5).repetitions().next().and_then(|r| {
            let n = r.component(2).part(1).or_else(|| r.part(1));
            let g = r.part(3);
            match (g, n) {
                (Some(g), Some(n)) => Some(format!("{g} {n}")),
                (None, n) => n,
                (g, None) => g,
            }
        });
        let time = ctx.datetime(
            seg.field(6).component(1).raw(),
            floc(&seg, 6, 1).with_comp(1),
        );
        out.push(obj! {"authorString": author, "time": time, "text": lines.join("\n")});
    }
    out
}
