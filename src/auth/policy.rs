//! The role policy: which member type may use which interaction on which
//! resource category. Data, not code: the default ships as
//! `config/role-policy.toml` (compiled in as the fallback) and a deployment
//! points `[auth] policy` at its own file.
//!
//! Interactions are the FHIR R4 RESTful interactions (`http.html` §3.1.0:
//! read, vread, search, history, create, update, delete) plus the operations
//! the gateway offers (`$summary`, `$everything`, `$match`/PIXm, `$validate`,
//! HL7 v2 and CSV/JSON ingest, `$evaluate-measure`, `$export`, MPI manual
//! link decisions). Resource categories group resource types (`[categories]`
//! in the policy file); a type in no category belongs to `other`.
//!
//! Invariant: deny by default — a (member type, interaction, category) cell
//! not listed in the policy is forbidden; an unknown interaction or category
//! name in the policy file is a load error, never silently ignored.
//! Invariant: decisions are pure functions of the [`Caller`] and the request's
//! interaction and type ([`decide`]); the HTTP mapping lives in `api::error`.

use super::{scope, Caller, MemberType};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// What a request does (RESTful interaction or operation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Interaction {
    Read,
    Vread,
    Search,
    History,
    Create,
    Update,
    Delete,
    /// `Patient/[id]/$summary` (IPS)
    Summary,
    /// `Patient/[id]/$everything`
    Everything,
    /// `Patient/$match`, `Patient/$ihe-pix`
    Match,
    /// `[type]/$validate`, `[type]/[id]/$validate`
    Validate,
    /// `POST /hl7v2` (and MLLP)
    Hl7v2,
    /// `POST /import/{institution}`
    Import,
    /// `Measure/$evaluate-measure`
    EvaluateMeasure,
    /// bulk `$export`
    Export,
    /// MPI manual decisions: `Person/$link`, `Person/$unlink`, `Task/[id]/$confirm|$reject`
    Link,
}

impl Interaction {
    pub const ALL: [Interaction; 16] = [
        Interaction::Read,
        Interaction::Vread,
        Interaction::Search,
        Interaction::History,
        Interaction::Create,
        Interaction::Update,
        Interaction::Delete,
        Interaction::Summary,
        Interaction::Everything,
        Interaction::Match,
        Interaction::Validate,
        Interaction::Hl7v2,
        Interaction::Import,
        Interaction::EvaluateMeasure,
        Interaction::Export,
        Interaction::Link,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::Search => "search",
            Interaction::History => "history",
            Interaction::Create => "create",
            Interaction::Update => "update",
            Interaction::Delete => "delete",
            Interaction::Summary => "summary",
            Interaction::Everything => "everything",
            Interaction::Match => "match",
            Interaction::Validate => "validate",
            Interaction::Hl7v2 => "hl7v2",
            Interaction::Import => "import",
            Interaction::EvaluateMeasure => "evaluate-measure",
            Interaction::Export => "export",
            Interaction::Link => "link",
        }
    }

    pub fn parse(s: &str) -> Option<Interaction> {
        Interaction::ALL.into_iter().find(|i| i.as_str() == s)
    }

    /// Reads leave the data unchanged (audited as a read, `R`/`E` actions).
    pub fn is_read(self) -> bool {
        !matches!(
            self,
            Interaction::Create | Interaction::Update | Interaction::Delete | Interaction::Hl7v2 | Interaction::Import | Interaction::Link
        )
    }

    /// The SMART v2 permission letters (`c r u d s`) a scope must grant for
    /// this interaction on the type (any one of them suffices).
    pub fn scope_permissions(self) -> &'static str {
        match self {
            Interaction::Read | Interaction::Vread | Interaction::Summary | Interaction::Everything => "r",
            Interaction::Search | Interaction::History | Interaction::Match | Interaction::EvaluateMeasure | Interaction::Export => "s",
            Interaction::Create | Interaction::Hl7v2 | Interaction::Import => "c",
            Interaction::Update | Interaction::Link => "u",
            Interaction::Delete => "d",
            Interaction::Validate => "crus",
        }
    }
}

/// The policy file (`config/role-policy.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// category name → resource types
    pub categories: BTreeMap<String, Vec<String>>,
    /// member type → category → interactions
    pub roles: HashMap<MemberType, BTreeMap<String, Vec<String>>>,
}

/// The compiled role policy.
#[derive(Debug, Clone)]
pub struct RolePolicy {
    category_of: HashMap<String, String>,
    /// category names in policy-file order, `other`, `ingest` and `system` last
    categories: Vec<String>,
    allowed: HashMap<(MemberType, String), HashSet<Interaction>>,
}

/// The category of requests without a resource type: `POST /hl7v2`, `POST /import/…`.
pub const INGEST: &str = "ingest";
/// The category of system-level requests across all types: `GET /_history`.
pub const SYSTEM: &str = "system";
/// The category of types listed in no category.
pub const OTHER: &str = "other";

/// The shipped default policy (also `config/role-policy.toml`).
pub const DEFAULT_POLICY: &str = include_str!("../../config/role-policy.toml");

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("role policy: {0}")]
    Parse(String),
    #[error("role policy: {0}")]
    Invalid(String),
}

impl RolePolicy {
    pub fn default_policy() -> RolePolicy {
        RolePolicy::parse(DEFAULT_POLICY).expect("the shipped role policy is valid")
    }

    pub fn parse(text: &str) -> Result<RolePolicy, PolicyError> {
        let f: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        RolePolicy::compile(f)
    }

    pub fn compile(f: PolicyFile) -> Result<RolePolicy, PolicyError> {
        let mut category_of = HashMap::new();
        let mut categories: Vec<String> = vec![];
        for (cat, types) in &f.categories {
            if [OTHER, INGEST, SYSTEM].contains(&cat.as_str()) {
                return Err(PolicyError::Invalid(format!("category '{cat}' is built in and cannot list types")));
            }
            categories.push(cat.clone());
            for t in types {
                if let Some(prev) = category_of.insert(t.clone(), cat.clone()) {
                    return Err(PolicyError::Invalid(format!("type {t} is in categories '{prev}' and '{cat}'")));
                }
            }
        }
        categories.extend([OTHER, INGEST, SYSTEM].map(String::from));
        let mut allowed: HashMap<(MemberType, String), HashSet<Interaction>> = HashMap::new();
        for (mt, cats) in &f.roles {
            for (cat, inters) in cats {
                if !categories.contains(cat) {
                    return Err(PolicyError::Invalid(format!("role {}: unknown category '{cat}'", mt.as_str())));
                }
                let set = allowed.entry((*mt, cat.clone())).or_default();
                for i in inters {
                    let i = Interaction::parse(i)
                        .ok_or_else(|| PolicyError::Invalid(format!("role {}, category {cat}: unknown interaction '{i}'", mt.as_str())))?;
                    set.insert(i);
                }
            }
        }
        Ok(RolePolicy { category_of, categories, allowed })
    }

    /// The category of a resource type (`other` when unlisted).
    pub fn category_of<'a>(&'a self, rtype: &str) -> &'a str {
        self.category_of.get(rtype).map(String::as_str).unwrap_or(OTHER)
    }

    /// Category names (the rows of the role matrix).
    pub fn categories(&self) -> &[String] {
        &self.categories
    }

    /// The types of a category (sorted; empty for the built-in ones).
    pub fn types_of(&self, category: &str) -> Vec<&str> {
        let mut v: Vec<&str> = self.category_of.iter().filter(|(_, c)| c.as_str() == category).map(|(t, _)| t.as_str()).collect();
        v.sort_unstable();
        v
    }

    /// Does the role allow this interaction on this category?
    pub fn allows_category(&self, mt: MemberType, i: Interaction, category: &str) -> bool {
        self.allowed.get(&(mt, category.to_owned())).is_some_and(|s| s.contains(&i))
    }

    /// Does the role allow this interaction on this type (`None`: the
    /// interaction has no type — ingest or system level)?
    pub fn allows(&self, mt: MemberType, i: Interaction, rtype: Option<&str>) -> bool {
        let cat = match (rtype, i) {
            (Some(t), _) => self.category_of(t),
            (None, Interaction::Hl7v2 | Interaction::Import) => INGEST,
            (None, _) => SYSTEM,
        };
        self.allows_category(mt, i, cat)
    }

    /// May any interaction of this member type touch data of this type at all?
    /// (Used to refuse scopes the role can never use.)
    pub fn any_on_type(&self, mt: MemberType, rtype: &str) -> bool {
        if rtype == "*" {
            return self.allowed.iter().any(|((m, _), s)| *m == mt && !s.is_empty());
        }
        let cat = self.category_of(rtype);
        self.allowed.get(&(mt, cat.to_owned())).is_some_and(|s| !s.is_empty())
    }
}

/// Why a request was refused (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("member type '{member_type}' may not use '{interaction}' on {what}")]
    Role { member_type: &'static str, interaction: &'static str, what: String },
    #[error("the access token's scopes do not allow '{interaction}' on {what}")]
    Scope { interaction: &'static str, what: String },
}

/// The access decision for one request: role policy and granted scopes
/// both have to allow it.
pub fn decide(policy: &RolePolicy, caller: &Caller, i: Interaction, rtype: Option<&str>) -> Result<(), Denied> {
    let what = match rtype {
        Some(t) => format!("{t} (category '{}')", policy.category_of(t)),
        None if matches!(i, Interaction::Hl7v2 | Interaction::Import) => "ingest".into(),
        None => "the whole system".into(),
    };
    if !policy.allows(caller.member_type, i, rtype) {
        return Err(Denied::Role { member_type: caller.member_type.as_str(), interaction: i.as_str(), what });
    }
    if !scope::permits(&caller.scopes, rtype.unwrap_or("*"), i.scope_permissions()) {
        return Err(Denied::Scope { interaction: i.as_str(), what });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(mt: MemberType, scopes: &[&str]) -> Caller {
        Caller { client_id: "c".into(), member: Some("m".into()), member_type: mt, scopes: scopes.iter().map(|s| s.to_string()).collect(), purpose_of_use: None }
    }

    #[test]
    fn default_policy_denies_by_default_and_keeps_insurers_off_patients() {
        let p = RolePolicy::default_policy();
        for i in Interaction::ALL {
            for t in ["Patient", "Observation", "Condition", "Encounter"] {
                assert!(!p.allows(MemberType::Insurer, i, Some(t)), "insurer {i:?} {t}");
            }
        }
        assert!(p.allows(MemberType::Insurer, Interaction::EvaluateMeasure, Some("Measure")));
        assert!(p.allows(MemberType::Insurer, Interaction::Export, None) || p.allows(MemberType::Insurer, Interaction::Export, Some("Group")));
        assert!(p.allows(MemberType::Hospital, Interaction::Read, Some("Observation")));
        assert!(!p.allows(MemberType::Hospital, Interaction::Read, Some("AuditEvent")));
        assert!(p.allows(MemberType::Operator, Interaction::Search, Some("AuditEvent")));
        assert!(!p.allows(MemberType::Pharmacy, Interaction::Delete, Some("Observation")));
        assert_eq!(p.category_of("NoSuchType"), OTHER);
    }

    #[test]
    fn decide_needs_role_and_scope() {
        let p = RolePolicy::default_policy();
        let c = caller(MemberType::Hospital, &["system/Observation.rs"]);
        assert!(decide(&p, &c, Interaction::Read, Some("Observation")).is_ok());
        assert!(matches!(decide(&p, &c, Interaction::Read, Some("Condition")), Err(Denied::Scope { .. })));
        let c = caller(MemberType::Insurer, &["system/*.cruds"]);
        assert!(matches!(decide(&p, &c, Interaction::Read, Some("Patient")), Err(Denied::Role { .. })));
    }

    #[test]
    fn bad_policy_files_are_errors() {
        assert!(RolePolicy::parse("[categories]\nx=[\"Patient\"]\n[roles.hospital]\ny=[\"read\"]\n").is_err());
        assert!(RolePolicy::parse("[categories]\nx=[\"Patient\"]\n[roles.hospital]\nx=[\"peek\"]\n").is_err());
        assert!(RolePolicy::parse("[categories]\nx=[\"Patient\"]\nz=[\"Patient\"]\n[roles]\n").is_err());
        assert!(RolePolicy::parse("[categories]\nx=[\"Patient\"]\n[roles.wizard]\nx=[\"read\"]\n").is_err());
    }
}
