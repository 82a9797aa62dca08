//! Who is calling and what they may do: the authenticated client, the
//! member Organization it belongs to and that member's type.
//!
//! This module is the home of access control for a multi-member network
//! (SMART Backend Services authentication, the role policy, care
//! relationships, Consent; issue 7). Until authentication is configured,
//! every request runs as [`Caller::dev_operator`], the unrestricted local
//! operator of a development server.
//!
//! | file | what |
//! | --- | --- |
//! | `token.rs` | SMART Backend Services: client assertions, access tokens, bearer checks |
//! | `scope.rs` | SMART v2 `system/` scopes |
//! | `policy.rs` | the role policy (member type × interaction × resource category) and [`policy::decide`] |
//! | `filter.rs` | the read filter of every request: care relationship, Consent, break-glass |
//! | `relationship.rs` | care relationships (Encounter, EpisodeOfCare, CareTeam, referral, treatment Consent) |
//! | `consent.rs` | privacy Consent evaluation (pure) |
//! | `bulk.rs` | the same decisions for exports and reports, facts loaded once per job |
//! | `audit.rs` | IHE BALP AuditEvent records of every access |
//! | `ratelimit.rs` | per-client token buckets |
//!
//! Invariant: other modules decide on a [`Caller`]'s `member_type` and
//! `member`, never on how the caller authenticated.

pub mod bulk;
pub mod consent;
pub mod filter;
pub mod relationship;
pub mod audit;
pub mod policy;
pub mod ratelimit;
pub mod scope;
pub mod token;

use serde::{Deserialize, Serialize};

/// The kinds of member a regional network has; the role policy maps each
/// to the interactions and resource types it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemberType {
    Hospital,
    GpPractice,
    NursingService,
    Therapist,
    Pharmacy,
    Municipality,
    Insurer,
    IntegrationEngine,
    Operator,
}

impl MemberType {
    pub const ALL: [MemberType; 9] = [
        MemberType::Hospital,
        MemberType::GpPractice,
        MemberType::NursingService,
        MemberType::Therapist,
        MemberType::Pharmacy,
        MemberType::Municipality,
        MemberType::Insurer,
        MemberType::IntegrationEngine,
        MemberType::Operator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MemberType::Hospital => "hospital",
            MemberType::GpPractice => "gp-practice",
            MemberType::NursingService => "nursing-service",
            MemberType::Therapist => "therapist",
            MemberType::Pharmacy => "pharmacy",
            MemberType::Municipality => "municipality",
            MemberType::Insurer => "insurer",
            MemberType::IntegrationEngine => "integration-engine",
            MemberType::Operator => "operator",
        }
    }

    /// Members that treat patients (clinical roles: may see individuals
    /// they have a care relationship with).
    pub fn is_clinical(self) -> bool {
        matches!(
            self,
            MemberType::Hospital
                | MemberType::GpPractice
                | MemberType::NursingService
                | MemberType::Therapist
                | MemberType::Pharmacy
                | MemberType::Municipality
        )
    }
}

/// The party behind one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// OAuth client id (`dev` for the unauthenticated development operator)
    pub client_id: String,
    /// logical id of the member's Organization (`Organization/{member}`);
    /// `None` only for the development operator
    pub member: Option<String>,
    pub member_type: MemberType,
    /// granted SMART v2 scopes (`system/Patient.rs`, …)
    pub scopes: Vec<String>,
    /// purpose of use asserted for this request (e.g. `TREAT`, `ETREAT`, `BTG`)
    pub purpose_of_use: Option<String>,
}

impl Caller {
    /// The unrestricted operator of a development server (no authentication configured).
    pub fn dev_operator() -> Caller {
        Caller {
            client_id: "dev".into(),
            member: None,
            member_type: MemberType::Operator,
            scopes: vec!["system/*.cruds".into()],
            purpose_of_use: None,
        }
    }

    pub fn is_insurer(&self) -> bool {
        self.member_type == MemberType::Insurer
    }

    /// `Organization/{member}` when the caller belongs to a member.
    pub fn member_reference(&self) -> Option<String> {
        self.member.as_ref().map(|m| format!("Organization/{m}"))
    }

    /// May this caller send HL7 v2 messages or exports of an institution
    /// that belongs to `institution_member` (its `member` setting)?
    /// Operators and integration engines send for every institution (they
    /// are the network's trusted writers); any other member only for
    /// institutions mapped to itself — otherwise it could write records,
    /// and with them care relationships, in another member's name.
    pub fn may_send_for(&self, institution: &str, institution_member: Option<&str>) -> Result<(), String> {
        if matches!(self.member_type, MemberType::Operator | MemberType::IntegrationEngine) {
            return Ok(());
        }
        let me = self.member.as_deref().unwrap_or("");
        match institution_member {
            Some(m) if m == me => Ok(()),
            Some(m) => Err(format!("institution '{institution}' belongs to Organization/{m}; Organization/{me} may send only its own institutions' data")),
            None => Err(format!(
                "institution '{institution}' is not mapped to a network member (`member` in its configuration); only integration engines and operators may send its data"
            )),
        }
    }
}
