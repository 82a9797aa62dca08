//! FHIR package cache reader (FHIR NPM package spec: `package/package.json`,
//! `package/.index.json`). Packages live in a cache laid out as
//! `<cache>/<name>#<version>/package/*.json`, installed by
//! `scripts/fhir-packages.sh` (pinned versions, checked hashes); the default
//! cache is `~/.fhir/packages`, overridable with `CAREBRIDGE_PACKAGE_CACHE`.
//!
//! What the foundation needs from the core package `hl7.fhir.r4.core#4.0.1`:
//! the list of resource types and the SearchParameter definitions. Both are
//! read through `.index.json`, so start-up parses only the ~1,400 small
//! SearchParameter files, not the 655 large StructureDefinitions.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub const CORE_PACKAGE: &str = "hl7.fhir.r4.core#4.0.1";

#[derive(Debug, thiserror::Error)]
pub enum DefinitionsError {
    #[error("FHIR package {0} not found in {1} — run scripts/fhir-packages.sh (README: first command)")]
    MissingPackage(String, String),
    #[error("reading {0}: {1}")]
    Io(String, std::io::Error),
    #[error("parsing {0}: {1}")]
    Parse(String, serde_json::Error),
}

/// Where the FHIR package cache is.
pub fn package_cache_dir() -> PathBuf {
    if let Ok(p) = std::env::var("CAREBRIDGE_PACKAGE_CACHE") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    Path::new(&home).join(".fhir").join("packages")
}

#[derive(Debug, Deserialize)]
struct Index {
    files: Vec<IndexFile>,
}

#[derive(Debug, Deserialize)]
struct IndexFile {
    filename: String,
    #[serde(rename = "resourceType")]
    resource_type: String,
    url: Option<String>,
    kind: Option<String>,
    #[serde(rename = "type")]
    type_: Option<String>,
}

/// A SearchParameter as the package defines it (only what search needs).
#[derive(Debug, Clone, Deserialize)]
pub struct SearchParamDef {
    pub url: String,
    pub code: String,
    #[serde(default)]
    pub base: Vec<String>,
    #[serde(rename = "type")]
    pub type_: String,
    pub expression: Option<String>,
    #[serde(default)]
    pub target: Vec<String>,
}

/// Definitions loaded from one or more packages.
#[derive(Debug, Default)]
pub struct Definitions {
    pub resource_types: BTreeSet<String>,
    pub search_params: Vec<SearchParamDef>,
    /// CompartmentDefinitions (R4 `compartmentdefinition.html`): compartment
    /// code (`Patient`, `Encounter`, …) → member resource type → the search
    /// parameters that put a resource of that type into the compartment.
    pub compartments: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

#[derive(Debug, Deserialize)]
struct CompartmentDef {
    code: String,
    #[serde(default)]
    resource: Vec<CompartmentMember>,
}

#[derive(Debug, Deserialize)]
struct CompartmentMember {
    code: String,
    #[serde(default)]
    param: Vec<String>,
}

impl Definitions {
    /// Load the core package from the cache.
    pub fn load_core(cache: &Path) -> Result<Self, DefinitionsError> {
        let dir = cache.join(CORE_PACKAGE).join("package");
        if !dir.join(".index.json").exists() {
            return Err(DefinitionsError::MissingPackage(
                CORE_PACKAGE.into(),
                cache.display().to_string(),
            ));
        }
        let mut defs = Definitions::default();
        defs.add_package(&dir)?;
        Ok(defs)
    }

    /// Add the resource types and SearchParameters of one package folder.
    pub fn add_package(&mut self, dir: &Path) -> Result<(), DefinitionsError> {
        let index_path = dir.join(".index.json");
        let raw = std::fs::read(&index_path)
            .map_err(|e| DefinitionsError::Io(index_path.display().to_string(), e))?;
        let index: Index = serde_json::from_slice(&raw)
            .map_err(|e| DefinitionsError::Parse(index_path.display().to_string(), e))?;
        for f in index.files {
            match f.resource_type.as_str() {
                "StructureDefinition" if f.kind.as_deref() == Some("resource") => {
                    if let (Some(t), Some(url)) = (f.type_, f.url) {
                        if url == format!("http://hl7.org/fhir/StructureDefinition/{t}")
                            && t != "Resource"
                            && t != "DomainResource"
                        {
                            self.resource_types.insert(t);
                        }
                    }
                }
                "CompartmentDefinition" => {
                    let p = dir.join(&f.filename);
                    let raw =
                        std::fs::read(&p).map_err(|e| DefinitionsError::Io(p.display().to_string(), e))?;
                    let cd: CompartmentDef = serde_json::from_slice(&raw)
                        .map_err(|e| DefinitionsError::Parse(p.display().to_string(), e))?;
                    let members = self.compartments.entry(cd.code).or_default();
                    for m in cd.resource.into_iter().filter(|m| !m.param.is_empty()) {
                        members.insert(m.code, m.param);
                    }
                }
                "SearchParameter" => {
                    let p = dir.join(&f.filename);
                    let raw =
                        std::fs::read(&p).map_err(|e| DefinitionsError::Io(p.display().to_string(), e))?;
                    let sp: SearchParamDef = serde_json::from_slice(&raw)
                        .map_err(|e| DefinitionsError::Parse(p.display().to_string(), e))?;
                    self.search_params.push(sp);
                }
                _ => {}
            }
        }
        Ok(())
    }
}
