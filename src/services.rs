//! The services every layer above `store`, `search` and `validate` shares:
//! the store, the search-parameter registry and the validator (both built
//! once at start from the definitions), the validation policy and the
//! master patient index policy (`mpi.rs`) and the read access policy
//! (`access.rs`).

pub mod access;
pub mod mpi;

use crate::search::Registry;
use crate::store::Store;
use crate::validate::Validator;
use std::sync::Arc;

/// What the write pipeline does with validation errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ValidationMode {
    /// reject the write (422) — the default
    #[default]
    Enforce,
    /// store, and log the issues for operators
    Warn,
    /// do not validate on write
    Off,
}

impl std::str::FromStr for ValidationMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "enforce" => Ok(ValidationMode::Enforce),
            "warn" => Ok(ValidationMode::Warn),
            "off" => Ok(ValidationMode::Off),
            _ => Err(format!("validation mode '{s}': expected enforce, warn or off")),
        }
    }
}

#[derive(Clone)]
pub struct Services {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub validator: Arc<Validator>,
    pub validation: ValidationMode,
    /// mandatory profiles of the loaded packs, per resource type and member
    pub policy: Arc<crate::validate::packs::Policy>,
    /// master patient index policy (thresholds, weights, trusted identifier systems)
    pub mpi: Arc<mpi::MpiConfig>,
    /// read access policy: Consent default, care relationship, break-glass codes (`access.rs`)
    pub access: Arc<access::AccessConfig>,
    /// the read filter's facts across requests, invalidated by every
    /// committed change (`access::FactsCache`)
    pub facts: Arc<access::FactsCache>,
}
