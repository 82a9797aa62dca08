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
//! [mpi]                                       # optional; defaults in services::mpi
//! upper = 19.0
//! lower = 11.0
//! ```

use serde::Deserialize;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {0}: {1}")]
    Io(String, std::io::Error),
    #[error("parsing {0}: {1}")]
    Parse(String, toml::de::Error),
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
    /// master patient index policy (see `services::mpi` for the keys and defaults)
    #[serde(default)]
    pub mpi: crate::services::mpi::MpiConfig,
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
            "[server]\nlisten = \"0.0.0.0:9000\"\nmax_body_bytes = 1024\n[database]\nurl = \"postgres://x@h/db\"\n",
        )
        .unwrap();
        assert_eq!(c.server.listen.as_deref(), Some("0.0.0.0:9000"));
        assert_eq!(c.server.max_body_bytes, Some(1024));
        assert_eq!(c.database.url.as_deref(), Some("postgres://x@h/db"));
        assert!(toml::from_str::<FileConfig>("[server]\nlisen = \"typo\"\n").is_err());
        let missing = FileConfig::load(Path::new("does-not-exist.toml"), false).unwrap();
        assert!(missing.server.listen.is_none());
        assert!(FileConfig::load(Path::new("does-not-exist.toml"), true).is_err());
    }
}
