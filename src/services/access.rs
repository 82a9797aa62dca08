//! Access policy settings (`[access]` in `carebridge.toml`), read by
//! `auth::filter` for every read: the default for patients without an
//! active `patient-privacy` Consent (FHIR R4 `consent.html`), whether
//! clinical members need a care relationship, and the purpose-of-use codes
//! (HL7 v3 ActReason, R4 `v3-PurposeOfUse`) that break the glass.
//!
//! ```toml
//! [access]
//! default_policy = "opt-in"        # or "opt-out"
//! care_relationship = true         # clinical members need a care relationship
//! break_glass = ["ETREAT", "BTG"]  # purpose-of-use codes that break the glass
//! secondary_use_purposes = ["HRESCH", "HPAYMT"]  # what de-identified exports and aggregates serve
//! ```

use serde::Deserialize;

/// What applies to a patient who has no active `patient-privacy` Consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    /// Opt-in region: records of other institutions are not shared without
    /// the patient's consent (the default).
    #[default]
    OptIn,
    /// Opt-out region: records are shared unless the patient objected.
    OptOut,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    pub default_policy: DefaultPolicy,
    /// Clinical members read a patient's records only with a care relationship.
    pub care_relationship: bool,
    /// `X-Purpose-Of-Use` / token purpose codes that break the glass.
    pub break_glass: Vec<String>,
    /// Purposes of use that de-identified exports and aggregate measure
    /// counts serve: a Consent that explicitly denies one of them (or the
    /// reader) keeps the person out (`auth::bulk`).
    pub secondary_use_purposes: Vec<String>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig { default_policy: DefaultPolicy::OptIn, care_relationship: true, break_glass: vec!["ETREAT".into(), "BTG".into()], secondary_use_purposes: vec!["HRESCH".into(), "HPAYMT".into()] }
    }
}
