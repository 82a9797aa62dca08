//! Privacy Consent evaluation (FHIR R4 `consent.html`, §2.38.1 scope
//! `patient-privacy`; `Consent.provision` rules; v3 ActConsentDirective
//! `OPTIN`/`OPTOUT` as `policyRule`; IHE BPPC/APPC's "base policy plus
//! exceptions" reading of provisions).
//!
//! A [`PrivacyConsent`] is parsed once per request from an active Consent
//! with scope `patient-privacy` and evaluated for one (caller, resource)
//! pair with [`decide`]:
//!
//! * The **base rule** is the top-level `provision.type`; without one,
//!   `policyRule` `OPTIN` means permit and `OPTOUT` deny; without either the
//!   Consent only carries its exceptions.
//! * A provision **matches** when every criterion it states matches (absent
//!   criteria match anything): `period` (now inside), `actor.reference`
//!   (the caller's member Organization, `Organization/{member}`; `role` is
//!   not compared — the gateway knows members, not roles), `action` (a read
//!   is `access` or `use` in `consentaction`), `securityLabel` (one of the
//!   resource's `meta.security` codings), `purpose` (the request's purpose
//!   of use), `class` (the resource type, as a `resource-types` code, or a
//!   profile canonical in `meta.profile`), `code` (a coding of the
//!   resource's `code`/`vaccineCode`/`medicationCodeableConcept`),
//!   `dataPeriod` (the resource's clinical date — `effective[x]`,
//!   `onset[x]`, `performed[x]`, `occurrence[x]`, `authoredOn`, `issued`,
//!   `recordedDate`, `date`, `period`, `created` — lies in it; a resource
//!   without one does not match) and `data` (meaning `instance`: that
//!   resource; `related`/`dependents`/`authoredby`: that resource or one
//!   referring to it).
//! * Nested provisions are exceptions to their parent: **the most specific
//!   (deepest) matching provision decides**; at equal depth, deny wins. A
//!   Consent whose top-level provision does not match has no opinion.
//! * Several active Consents of one person combine the same way (deepest
//!   decision, deny on ties).
//!
//! Invariant: evaluation is pure — no store access; what it needs about the
//! resource comes from its JSON.

use crate::fhir::datetime;
use serde_json::Value;

pub const CONSENT_SCOPE: &str = "http://terminology.hl7.org/CodeSystem/consentscope";
pub const RESOURCE_TYPES: &str = "http://hl7.org/fhir/resource-types";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Permit,
    Deny,
}

/// A system/code pair; `system` `None` matches any system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    pub system: Option<String>,
    pub code: String,
}

impl Code {
    fn of(c: &Value) -> Option<Code> {
        Some(Code { system: c.get("system").and_then(Value::as_str).map(str::to_owned), code: c.get("code")?.as_str()?.to_owned() })
    }
    /// Does this (provision) coding match `other` (a resource's coding)?
    fn matches(&self, other: &Code) -> bool {
        self.code == other.code && (self.system.is_none() || other.system.is_none() || self.system == other.system)
    }
}

fn codings(v: Option<&Value>) -> Vec<Code> {
    // a Coding, a CodeableConcept, or arrays of either
    let mut out = vec![];
    let mut push = |c: &Value| {
        if let Some(cs) = c.get("coding").and_then(Value::as_array) {
            out.extend(cs.iter().filter_map(Code::of));
        } else if let Some(k) = Code::of(c) {
            out.push(k);
        }
    };
    match v {
        Some(Value::Array(a)) => a.iter().for_each(&mut push),
        Some(c @ Value::Object(_)) => push(c),
        _ => {}
    }
    out
}

fn period(v: Option<&Value>) -> Option<(i64, i64)> {
    let p = v?;
    let lo = p.get("start").and_then(Value::as_str).and_then(datetime::parse).map(|d| d.lo).unwrap_or(i64::MIN);
    let hi = p.get("end").and_then(Value::as_str).and_then(datetime::parse).map(|d| d.hi).unwrap_or(i64::MAX);
    Some((lo, hi))
}

/// One `Consent.provision` (or nested `provision.provision`).
#[derive(Debug, Clone, Default)]
pub struct Provision {
    pub rule: Option<Rule>,
    pub period: Option<(i64, i64)>,
    /// `actor.reference.reference` values
    pub actors: Vec<String>,
    pub actions: Vec<Code>,
    pub security_labels: Vec<Code>,
    pub purposes: Vec<Code>,
    pub classes: Vec<Code>,
    pub codes: Vec<Code>,
    pub data_period: Option<(i64, i64)>,
    /// (`data.meaning`, `data.reference.reference`)
    pub data: Vec<(String, String)>,
    pub children: Vec<Provision>,
}

impl Provision {
    fn parse(v: &Value) -> Provision {
        let rule = match v.get("type").and_then(Value::as_str) {
            Some("permit") => Some(Rule::Permit),
            Some("deny") => Some(Rule::Deny),
            _ => None,
        };
        let arr = |k: &str| v.get(k).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
        Provision {
            rule,
            period: period(v.get("period")),
            actors: arr("actor").iter().filter_map(|a| a.pointer("/reference/reference").and_then(Value::as_str).map(str::to_owned)).collect(),
            actions: codings(v.get("action")),
            security_labels: codings(v.get("securityLabel")),
            purposes: codings(v.get("purpose")),
            classes: codings(v.get("class")),
            codes: codings(v.get("code")),
            data_period: period(v.get("dataPeriod")),
            data: arr("data")
                .iter()
                .filter_map(|d| {
                    let r = d.pointer("/reference/reference")?.as_str()?;
                    Some((d.get("meaning").and_then(Value::as_str).unwrap_or("instance").to_owned(), r.to_owned()))
                })
                .collect(),
            children: arr("provision").iter().map(Provision::parse).collect(),
        }
    }

    fn matches(&self, a: &AccessFacts<'_>, r: &ResourceFacts<'_>) -> bool {
        if let Some((lo, hi)) = self.period {
            if a.now < lo || a.now > hi {
                return false;
            }
        }
        if !self.actors.is_empty() && !self.actors.iter().any(|x| a.is_member_reference(x)) {
            return false;
        }
        if !self.actions.is_empty() && !self.actions.iter().any(|c| c.code == "access" || c.code == "use") {
            return false;
        }
        if !self.purposes.is_empty() {
            let Some(p) = a.purpose else { return false };
            if !self.purposes.iter().any(|c| c.code == p) {
                return false;
            }
        }
        if !self.security_labels.is_empty() && !self.security_labels.iter().any(|c| r.security.iter().any(|s| c.matches(s))) {
            return false;
        }
        if !self.classes.is_empty()
            && !self.classes.iter().any(|c| {
                let is_type = c.system.as_deref().is_none_or(|s| s == RESOURCE_TYPES) && c.code == r.rtype;
                is_type || r.profiles.contains(&c.code)
            })
        {
            return false;
        }
        if !self.codes.is_empty() && !self.codes.iter().any(|c| r.codes.iter().any(|x| c.matches(x))) {
            return false;
        }
        if let Some((lo, hi)) = self.data_period {
            match r.date {
                Some((dlo, dhi)) if dlo >= lo && dhi <= hi => {}
                _ => return false,
            }
        }
        if !self.data.is_empty() {
            let me = format!("{}/{}", r.rtype, r.id);
            let hit = self.data.iter().any(|(meaning, target)| {
                let target = relative(target);
                target == me || (meaning != "instance" && r.references.iter().any(|x| relative(x) == target))
            });
            if !hit {
                return false;
            }
        }
        true
    }

    /// (rule, depth, purpose-specific, explicit) of the deepest matching
    /// provision; `named`: an enclosing provision names a purpose or actor.
    fn decide(&self, depth: usize, a: &AccessFacts<'_>, r: &ResourceFacts<'_>, base: Option<Rule>, named: bool) -> Option<Decision> {
        if !self.matches(a, r) {
            return None;
        }
        let named = named || !self.purposes.is_empty() || !self.actors.is_empty();
        let mut best: Option<Decision> = None;
        for c in &self.children {
            if let Some(d) = c.decide(depth + 1, a, r, None, named) {
                best = Some(combine(best, d));
            }
        }
        best.or_else(|| {
            self.rule.or(base).map(|rule| Decision { rule, depth, purpose_specific: !self.purposes.is_empty(), explicit: named })
        })
    }
}

/// `Type/id` of a relative or absolute literal reference.
fn relative(r: &str) -> String {
    match crate::fhir::reference::parse(r) {
        (Some(t), Some(i)) => format!("{t}/{i}"),
        _ => r.to_owned(),
    }
}

/// A decision of one Consent (or several combined).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub rule: Rule,
    /// 0 = top-level provision / base rule
    pub depth: usize,
    /// the deciding provision names a purpose of use
    pub purpose_specific: bool,
    /// the deciding provision or one it is nested in names a purpose of use
    /// or an actor: the patient decided about this use or this reader
    /// explicitly (what secondary use honours, `auth::bulk`)
    pub explicit: bool,
}

fn combine(a: Option<Decision>, b: Decision) -> Decision {
    match a {
        None => b,
        Some(a) if b.depth > a.depth => b,
        Some(a) if b.depth == a.depth && b.rule == Rule::Deny && a.rule == Rule::Permit => b,
        Some(a) => a,
    }
}

/// An active `patient-privacy` Consent, ready to evaluate.
#[derive(Debug, Clone)]
pub struct PrivacyConsent {
    pub id: String,
    base: Option<Rule>,
    root: Provision,
}

/// What a Consent is about: `scope` codes of `consentscope`.
pub fn scope_codes(consent: &Value) -> Vec<String> {
    codings(consent.get("scope")).into_iter().filter(|c| c.system.as_deref().is_none_or(|s| s == CONSENT_SCOPE)).map(|c| c.code).collect()
}

pub fn is_active(consent: &Value) -> bool {
    consent.get("status").and_then(Value::as_str) == Some("active")
}

impl PrivacyConsent {
    /// An active `patient-privacy` Consent; `None` for any other.
    pub fn parse(consent: &Value) -> Option<PrivacyConsent> {
        if !is_active(consent) || !scope_codes(consent).iter().any(|c| c == "patient-privacy") {
            return None;
        }
        let root = consent.get("provision").map(Provision::parse).unwrap_or_default();
        let policy = consent
            .get("policyRule")
            .map(|p| codings(Some(p)))
            .unwrap_or_default()
            .into_iter()
            .find_map(|c| match c.code.as_str() {
                "OPTIN" => Some(Rule::Permit),
                "OPTOUT" => Some(Rule::Deny),
                _ => None,
            });
        Some(PrivacyConsent { id: consent.get("id").and_then(Value::as_str).unwrap_or_default().to_owned(), base: root.rule.or(policy), root })
    }

    pub fn decide(&self, a: &AccessFacts<'_>, r: &ResourceFacts<'_>) -> Option<Decision> {
        self.root.decide(0, a, r, self.base, false)
    }
}

/// The combined decision of several Consents (`None`: none has an opinion).
pub fn decide<'c>(consents: impl IntoIterator<Item = &'c PrivacyConsent>, a: &AccessFacts<'_>, r: &ResourceFacts<'_>) -> Option<Decision> {
    let mut best = None;
    for c in consents {
        if let Some(d) = c.decide(a, r) {
            best = Some(combine(best, d));
        }
    }
    best
}

/// The requesting side of an access.
#[derive(Debug, Clone)]
pub struct AccessFacts<'a> {
    /// `Organization/{member}`
    pub member: Option<&'a str>,
    /// purpose of use code (`TREAT`, `ETREAT`, `BTG`, …)
    pub purpose: Option<&'a str>,
    /// now, µs since the epoch
    pub now: i64,
}

impl AccessFacts<'_> {
    fn is_member_reference(&self, r: &str) -> bool {
        let Some(m) = self.member else { return false };
        r == m || r.ends_with(&format!("/{m}"))
    }
}

/// What a provision can test about a resource, taken from its JSON.
#[derive(Debug, Clone, Default)]
pub struct ResourceFacts<'a> {
    pub rtype: &'a str,
    pub id: &'a str,
    pub security: Vec<Code>,
    pub profiles: Vec<String>,
    pub codes: Vec<Code>,
    /// the clinically relevant date range
    pub date: Option<(i64, i64)>,
    /// every literal reference in the resource
    pub references: Vec<String>,
}

const DATE_ELEMENTS: &[&str] = &[
    "effectiveDateTime",
    "effectiveInstant",
    "effectivePeriod",
    "onsetDateTime",
    "onsetPeriod",
    "performedDateTime",
    "performedPeriod",
    "occurrenceDateTime",
    "occurrencePeriod",
    "authoredOn",
    "issued",
    "recordedDate",
    "date",
    "period",
    "created",
];

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "reference" {
                    if let Some(s) = x.as_str() {
                        out.push(s.to_owned());
                    }
                } else {
                    collect_refs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

impl<'a> ResourceFacts<'a> {
    pub fn of(rtype: &'a str, id: &'a str, res: &Value) -> ResourceFacts<'a> {
        let mut codes = vec![];
        for k in ["code", "vaccineCode", "medicationCodeableConcept"] {
            codes.extend(codings(res.get(k)));
        }
        let date = DATE_ELEMENTS.iter().find_map(|k| {
            let v = res.get(*k)?;
            match v {
                Value::String(s) => datetime::parse(s).map(|d| (d.lo, d.hi)),
                Value::Object(_) => period(Some(v)),
                _ => None,
            }
        });
        let mut references = vec![];
        collect_refs(res, &mut references);
        ResourceFacts {
            rtype,
            id,
            security: codings(res.pointer("/meta/security")),
            profiles: res
                .pointer("/meta/profile")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default(),
            codes,
            date,
            references,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn consent(provision: Value) -> PrivacyConsent {
        PrivacyConsent::parse(&json!({
            "resourceType": "Consent", "id": "c", "status": "active",
            "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
            "provision": provision,
        }))
        .unwrap()
    }

    fn facts() -> AccessFacts<'static> {
        AccessFacts { member: Some("Organization/gp"), purpose: Some("TREAT"), now: datetime::parse("2024-06-01").unwrap().lo }
    }

    #[test]
    fn deepest_provision_decides() {
        let c = consent(json!({"type": "permit", "provision": [{"type": "deny", "class": [{"system": RESOURCE_TYPES, "code": "Observation"}],
            "provision": [{"type": "permit", "code": [{"coding": [{"system": "http://loinc.org", "code": "718-7"}]}]}]}]}));
        let obs = json!({"resourceType": "Observation", "code": {"coding": [{"system": "http://loinc.org", "code": "1-8"}]}});
        let hb = json!({"resourceType": "Observation", "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]}});
        let cond = json!({"resourceType": "Condition"});
        let d = |v: &Value, t| c.decide(&facts(), &ResourceFacts::of(t, "x", v)).map(|d| d.rule);
        assert_eq!(d(&obs, "Observation"), Some(Rule::Deny));
        assert_eq!(d(&hb, "Observation"), Some(Rule::Permit));
        assert_eq!(d(&cond, "Condition"), Some(Rule::Permit));
    }

    #[test]
    fn criteria() {
        let c = consent(json!({"type": "deny", "provision": [{"type": "permit", "actor": [{"role": {"text": "x"}, "reference": {"reference": "Organization/gp"}}],
            "purpose": [{"code": "TREAT"}], "period": {"start": "2024-01-01", "end": "2024-12-31"},
            "dataPeriod": {"start": "2023-01-01"}}]}));
        let obs = json!({"resourceType": "Observation", "effectiveDateTime": "2023-05-01"});
        let old = json!({"resourceType": "Observation", "effectiveDateTime": "2022-05-01"});
        assert_eq!(c.decide(&facts(), &ResourceFacts::of("Observation", "o", &obs)).unwrap().rule, Rule::Permit);
        assert_eq!(c.decide(&facts(), &ResourceFacts::of("Observation", "o", &old)).unwrap().rule, Rule::Deny);
        let other = AccessFacts { member: Some("Organization/h"), ..facts() };
        assert_eq!(c.decide(&other, &ResourceFacts::of("Observation", "o", &obs)).unwrap().rule, Rule::Deny);
        let later = AccessFacts { now: datetime::parse("2025-02-01").unwrap().lo, ..facts() };
        assert_eq!(c.decide(&later, &ResourceFacts::of("Observation", "o", &obs)).unwrap().rule, Rule::Deny);
    }

    #[test]
    fn explicit_denials_name_the_purpose_or_the_actor() {
        // research opt-out nested under a permit: explicit for HRESCH, nothing for TREAT
        let c = consent(json!({"type": "permit", "provision": [{"type": "deny", "purpose": [{"code": "HRESCH"}],
            "provision": [{"type": "deny", "class": [{"code": "Observation"}]}]}]}));
        let obs = json!({"resourceType": "Observation"});
        let research = AccessFacts { purpose: Some("HRESCH"), ..facts() };
        let d = c.decide(&research, &ResourceFacts::of("Observation", "o", &obs)).unwrap();
        assert_eq!((d.rule, d.depth, d.purpose_specific, d.explicit), (Rule::Deny, 2, false, true), "nested under the purpose");
        let d = c.decide(&facts(), &ResourceFacts::of("Observation", "o", &obs)).unwrap();
        assert_eq!((d.rule, d.explicit), (Rule::Permit, false));
        // a plain base deny is not explicit; a deny naming the reader is
        let base = consent(json!({"type": "deny"}));
        assert!(!base.decide(&research, &ResourceFacts::of("Observation", "o", &obs)).unwrap().explicit);
        let actor = consent(json!({"type": "permit", "provision": [{"type": "deny", "actor": [{"reference": {"reference": "Organization/gp"}}]}]}));
        let d = actor.decide(&research, &ResourceFacts::of("Observation", "o", &obs)).unwrap();
        assert_eq!((d.rule, d.explicit), (Rule::Deny, true));
    }

    #[test]
    fn inactive_and_other_scopes_are_ignored() {
        let mut v = json!({"resourceType": "Consent", "status": "inactive", "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]}});
        assert!(PrivacyConsent::parse(&v).is_none());
        v["status"] = json!("active");
        v["scope"] = json!({"coding": [{"system": CONSENT_SCOPE, "code": "treatment"}]});
        assert!(PrivacyConsent::parse(&v).is_none());
    }
}
