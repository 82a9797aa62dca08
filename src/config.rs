//! Configuration: `carebridge.toml` (optional), overridden by environment
//! variables, overridden by command-line flags (clap reads both).
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:8080"
//! base_url = "https://gw.example.org/fhir"   # optional; default from Host
//! max_body_bytes = 67108864
//! [database]
//! url = "sqlite:data/carebridge.db"           # or postgres://user@host/db
//! [fhir]
//! package_cache = "~/.fhir/packages"          # optional
//! [hl7v2]
//! default_time_zone = "Europe/Berlin"         # for unconfigured senders
//! [[hl7v2.institution]]                       # one per member sending v2
//! id = "klinikum-nord"                        # part of every resource id: never change it
//! facilities = ["KLINIKUM-NORD", "KLN"]       # MSH-4.1 values (case-insensitive)
//! name = "Klinikum Nord"                      # Organization.name
//! time_zone = "Europe/Berlin"                 # v2 times without offset
//! mrn_system = "urn:oid:1.2.276.0.76.4.8"     # PID-3 without assigning authority
//! [hl7v2.institution.identifier_systems]      # assigning authority / type code → system
//! KVNR = "http://fhir.de/sid/gkv/kvid-10"
//! MRN-KLN = "urn:oid:1.2.276.0.76.4.8"
//! [import]
//! mappings_dir = "mappings"                   # CSV/JSON import mapping files
//! packs = ["profiles/de-region"]              # optional: regional profile packs
//! [report]                                    # optional; defaults in report::ReportConfig
//! min_cell = 5                                # small-cell suppression threshold k
//! export_dir = "data/export"                  # Bulk Data NDJSON files
//! export_ttl_secs = 86400
//! pseudonym_key = "…"                         # keyed hash of de-identified exports
//! [mpi]                                       # optional; defaults in services::mpi
//! upper = 19.0
//! lower = 11.0
//! [access]                                    # optional; defaults in services::access
//! default_policy = "opt-in"                   # or "opt-out": patients without Consent
//! care_relationship = true                    # clinical members need a care relationship
//! break_glass = ["ETREAT", "BTG"]             # purpose-of-use codes that break the glass
//! ```
//!
//! Configured identifier systems come before the German defaults
//! (KVNR/GKV, IK/IKNR, LANR, BSNR), which stay available.

use crate::ingest::hl7v2::Hl7Config;
use crate::translate::hl7v2::map::InstitutionConfig;
use crate::translate::hl7v2::Zone;
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {0}: {1}")]
    Io(String, std::io::Error),
    #[error("parsing {0}: {1}")]
    Parse(String, toml::de::Error),
    #[error("hl7v2 institution '{0}': {1}")]
    Institution(String, String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub database: DatabaseSection,
    #[serde(default)]
    pub fhir: FhirSection,
    #[serde(default)]
    pub import: ImportSection,
    #[serde(default)]
    pub hl7v2: Hl7v2Section,
    /// master patient index policy (see `services::mpi` for the keys and defaults)
    #[serde(default)]
    pub mpi: crate::services::mpi::MpiConfig,
    /// read access policy: Consent default, care relationship, break-glass
    /// (see `services::access` for the keys and defaults)
    #[serde(default)]
    pub access: crate::services::access::AccessConfig,
    /// reports and bulk export (see `report::ReportConfig` for the keys and defaults)
    #[serde(default)]
    pub report: crate::report::ReportConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7v2Section {
    /// IANA zone for senders without an `[[hl7v2.institution]]` entry
    pub default_time_zone: Option<String>,
    #[serde(default)]
    pub institution: Vec<InstitutionSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstitutionSection {
    pub id: String,
    #[serde(default)]
    pub facilities: Vec<String>,
    pub name: Option<String>,
    pub time_zone: Option<String>,
    pub mrn_system: Option<String>,
    #[serde(default)]
    pub identifier_systems: std::collections::BTreeMap<String, String>,
}

impl Hl7v2Section {
    /// The ingest settings: institutions by facility code; bad zones or ids are errors.
    pub fn to_hl7_config(&self) -> Result<Hl7Config, ConfigError> {
        let zone = |owner: &str, z: &Option<String>| -> Result<Option<Zone>, ConfigError> {
            z.as_deref()
                .map(|z| Zone::iana(z).map_err(|e| ConfigError::Institution(owner.to_owned(), format!("time_zone '{z}': {e}"))))
                .transpose()
        };
        let mut out = Hl7Config { default_zone: zone("(default)", &self.default_time_zone)?, ..Default::default() };
        for i in &self.institution {
            let id_ok = !i.id.is_empty() && i.id.len() <= 64 && i.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if !id_ok {
                return Err(ConfigError::Institution(i.id.clone(), "id must be 1-64 characters [A-Za-z0-9-.]".into()));
            }
            let mut c = InstitutionConfig::new(i.id.clone());
            c.organization_name = i.name.clone();
            if let Some(z) = zone(&i.id, &i.time_zone)?.or_else(|| out.default_zone.clone()) {
                c.time_zone = z;
            }
            if let Some(m) = &i.mrn_system {
                c.mrn_system = m.clone();
            }
            let mut systems: Vec<(String, String)> = i.identifier_systems.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            systems.append(&mut c.identifier_systems);
            c.identifier_systems = systems;
            let facilities = if i.facilities.is_empty() { vec![i.id.clone()] } else { i.facilities.clone() };
            for f in facilities {
                let key = f.trim().to_ascii_lowercase();
                if out.institutions.insert(key, c.clone()).is_some() {
                    return Err(ConfigError::Institution(i.id.clone(), format!("facility '{f}' is configured twice")));
                }
            }
        }
        Ok(out)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub listen: Option<String>,
    pub base_url: Option<String>,
    pub max_body_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    pub url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirSection {
    pub package_cache: Option<String>,
    /// profile packs to load (`profiles/de-region`, …); `--pack` / `CAREBRIDGE_PACKS` override
    pub packs: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportSection {
    pub mappings_dir: Option<String>,
}

impl FileConfig {
    /// Read `path`; a missing default file is an empty config.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(s) => toml::from_str(&s).map_err(|e| ConfigError::Parse(path.display().to_string(), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(FileConfig::default()),
            Err(e) => Err(ConfigError::Io(path.display().to_string(), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_unknown_keys() {
        let c: FileConfig = toml::from_str(
            "[server]\nlisten = \"0.0.0.0:9000\"\nmax_body_bytes = 1024\n[database]\nurl = \"postgres://x@h/db\"\n[import]\nmappings_dir = \"m\"\n",
        )
        .unwrap();
        assert_eq!(c.server.listen.as_deref(), Some("0.0.0.0:9000"));
        assert_eq!(c.server.max_body_bytes, Some(1024));
        assert_eq!(c.database.url.as_deref(), Some("postgres://x@h/db"));
        assert_eq!(c.import.mappings_dir.as_deref(), Some("m"));
        assert!(toml::from_str::<FileConfig>("[server]\nlisen = \"typo\"\n").is_err());
        let missing = FileConfig::load(Path::new("does-not-exist.toml"), false).unwrap();
        assert!(missing.server.listen.is_none());
        assert!(FileConfig::load(Path::new("does-not-exist.toml"), true).is_err());
    }

    #[test]
    fn hl7v2_institutions() {
        let c: FileConfig = toml::from_str(
            "[hl7v2]\ndefault_time_zone = \"Asia/Shanghai\"\n[[hl7v2.institution]]\nid = \"klinikum-nord\"\nfacilities = [\"KLN\", \"Klinikum-Nord\"]\nname = \"Klinikum Nord\"\nmrn_system = \"urn:oid:1.2.3\"\n[hl7v2.institution.identifier_systems]\nPI = \"urn:oid:1.2.3.4\"\n",
        )
        .unwrap();
        let h = c.hl7v2.to_hl7_config().unwrap();
        let k = h.institution_for("kln");
        assert_eq!(k.institution_id, "klinikum-nord");
        assert_eq!(h.institution_for("KLINIKUM-NORD").institution_id, "klinikum-nord");
        assert_eq!(k.mrn_system, "urn:oid:1.2.3");
        assert_eq!(k.system_for("pi"), Some("urn:oid:1.2.3.4"));
        assert_eq!(k.system_for("KVNR"), Some("http://fhir.de/sid/gkv/kvid-10"));
        // the institution inherits the default zone; unconfigured senders too
        assert_eq!(k.time_zone.iana_name(), Some("Asia/Shanghai"));
        assert_eq!(h.institution_for("OTHER").time_zone.iana_name(), Some("Asia/Shanghai"));
        let bad: FileConfig = toml::from_str("[[hl7v2.institution]]\nid = \"x\"\ntime_zone = \"Mars/Base\"\n").unwrap();
        assert!(matches!(bad.hl7v2.to_hl7_config(), Err(ConfigError::Institution(..))));
        let dup: FileConfig = toml::from_str("[[hl7v2.institution]]\nid = \"a\"\nfacilities=[\"F\"]\n[[hl7v2.institution]]\nid = \"b\"\nfacilities=[\"f\"]\n").unwrap();
        assert!(dup.hl7v2.to_hl7_config().is_err());
        let badid: FileConfig = toml::from_str("[[hl7v2.institution]]\nid = \"a b\"\n").unwrap();
        assert!(badid.hl7v2.to_hl7_config().is_err());
    }
}
