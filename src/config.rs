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
//! member = "klinikum-nord"                    # optional: the [[auth.member]] it belongs to
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
//! Access control (`[auth]`, see README "Access control"; absent: `serve`
//! needs `--insecure-dev` and a loopback address):
//!
//! ```toml
//! [server.tls]                                # optional: HTTPS (rustls); SIGHUP reloads the files
//! cert = "tls/gateway.crt"                    # PEM chain
//! key = "tls/gateway.key"                     # PEM private key
//! client_ca = "tls/members-ca.pem"            # optional: request client certificates from this CA
//! [auth]
//! issuer = "https://gw.example.org"           # iss/aud of the gateway's access tokens
//! token_url = "https://gw.example.org/auth/token"  # aud of client assertions (default {base}/auth/token)
//! signing_key = "secrets/gateway-es256.pem"   # PKCS#8 EC P-256; generated at start when absent (dev)
//! token_lifetime_seconds = 300
//! clock_skew_seconds = 60
//! policy = "config/role-policy.toml"          # default: the shipped policy
//! rate_limit = { per_second = 50, burst = 100 }   # per client; optional
//! [[auth.member]]
//! id = "klinikum-nord"                        # Organization id
//! type = "hospital"                           # hospital, gp-practice, nursing-service, therapist,
//!                                             # pharmacy, municipality, insurer, integration-engine, operator
//! client_cert_sha256 = ["ab12…"]              # optional: its clients must present one of these certificates
//! [[auth.client]]
//! client_id = "kln-ehr"
//! member = "klinikum-nord"
//! jwks = "keys/kln-ehr.jwks.json"             # a path, or inline: jwks = { keys = [ … ] }
//! scopes = ["system/*.cruds"]                 # the most this client may be granted
//! rate_limit = { per_second = 10, burst = 20 }    # optional override
//! max_body_bytes = 1048576                    # optional override of server.max_body_bytes
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
    #[error("auth: {0}")]
    Auth(String),
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
    /// access control (SMART Backend Services, members, role policy)
    pub auth: Option<AuthSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    pub issuer: Option<String>,
    pub token_url: Option<String>,
    pub signing_key: Option<String>,
    pub token_lifetime_seconds: Option<i64>,
    pub clock_skew_seconds: Option<i64>,
    pub policy: Option<String>,
    pub rate_limit: Option<crate::auth::ratelimit::RateSpec>,
    #[serde(default)]
    pub member: Vec<MemberSection>,
    #[serde(default)]
    pub client: Vec<ClientSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSection {
    pub id: String,
    #[serde(rename = "type")]
    pub member_type: crate::auth::MemberType,
    #[serde(default)]
    pub client_cert_sha256: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSection {
    pub client_id: String,
    pub member: String,
    /// a JWKS file path, or the JWKS inline
    pub jwks: JwksSource,
    pub scopes: Vec<String>,
    pub rate_limit: Option<crate::auth::ratelimit::RateSpec>,
    pub max_body_bytes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum JwksSource {
    Path(String),
    Inline(serde_json::Value),
}

impl AuthSection {
    /// The run-time authenticator; every reference is checked (unknown
    /// member, bad JWKS, bad scope, unreadable key or policy are errors).
    /// Relative paths are taken from `dir` (the config file's folder).
    pub fn build(&self, dir: &Path) -> Result<crate::auth::token::Authenticator, ConfigError> {
        use crate::auth::policy::RolePolicy;
        use crate::auth::scope::Scope;
        use crate::auth::token::{AuthSettings, Authenticator, ClientReg, GatewayKey};
        let err = |m: String| ConfigError::Auth(m);
        let read = |p: &str| -> Result<Vec<u8>, ConfigError> {
            let path = dir.join(p);
            std::fs::read(&path).map_err(|e| ConfigError::Io(path.display().to_string(), e))
        };
        let policy = match &self.policy {
            Some(p) => RolePolicy::parse(&String::from_utf8_lossy(&read(p)?)).map_err(|e| err(format!("{p}: {e}")))?,
            None => RolePolicy::default_policy(),
        };
        let key = match &self.signing_key {
            Some(p) => GatewayKey::from_pem(&read(p)?).map_err(|e| err(format!("{p}: {e}")))?,
            None => GatewayKey::generate(),
        };
        let mut members = std::collections::HashMap::new();
        for m in &self.member {
            if members.insert(m.id.clone(), m).is_some() {
                return Err(err(format!("member '{}' is listed twice", m.id)));
            }
        }
        let mut clients = std::collections::HashMap::new();
        for c in &self.client {
            let m = members.get(&c.member).ok_or_else(|| err(format!("client '{}': unknown member '{}'", c.client_id, c.member)))?;
            let jwks_value = match &c.jwks {
                JwksSource::Path(p) => serde_json::from_slice::<serde_json::Value>(&read(p)?).map_err(|e| err(format!("client '{}': {p}: {e}", c.client_id)))?,
                JwksSource::Inline(v) => v.clone(),
            };
            let jwks: jsonwebtoken::jwk::JwkSet =
                serde_json::from_value(jwks_value).map_err(|e| err(format!("client '{}': JWKS: {e}", c.client_id)))?;
            if jwks.keys.is_empty() {
                return Err(err(format!("client '{}': the JWKS has no keys", c.client_id)));
            }
            let scopes = c.scopes.iter().map(|s| Scope::parse(s)).collect::<Result<Vec<_>, _>>().map_err(|e| err(format!("client '{}': {e}", c.client_id)))?;
            let reg = ClientReg {
                client_id: c.client_id.clone(),
                member: c.member.clone(),
                member_type: m.member_type,
                jwks,
                scopes,
                rate: c.rate_limit,
                max_body_bytes: c.max_body_bytes,
                client_cert_sha256: m.client_cert_sha256.iter().map(|s| s.replace(':', "").to_ascii_lowercase()).collect(),
            };
            if clients.insert(c.client_id.clone(), reg).is_some() {
                return Err(err(format!("client '{}' is listed twice", c.client_id)));
            }
        }
        if key.ephemeral {
            tracing::warn!("auth.signing_key is not set: access tokens are signed with a key generated at start (development only: tokens die with the process and are not shared between replicas)");
        }
        Ok(Authenticator::new(AuthSettings {
            clients,
            members: members.iter().map(|(k, m)| (k.clone(), m.member_type)).collect(),
            policy,
            token_url: self.token_url.clone(),
            issuer: self.issuer.clone().unwrap_or_else(|| "urn:carebridge:gateway".into()),
            token_lifetime: self.token_lifetime_seconds.unwrap_or(300).clamp(30, 3600),
            clock_skew: self.clock_skew_seconds.unwrap_or(60).clamp(0, 300),
            key,
            rate: self.rate_limit,
        }))
    }
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
    /// the network member (`[[auth.member]]` id) the institution belongs to
    pub member: Option<String>,
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
            if let Some(m) = &i.member {
                if !crate::fhir::is_valid_id(m) {
                    return Err(ConfigError::Institution(i.id.clone(), format!("member '{m}' is not a FHIR id")));
                }
                c.member = Some(m.clone());
            }
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
    /// HTTPS via rustls
    pub tls: Option<TlsSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub cert: String,
    pub key: String,
    pub client_ca: Option<String>,
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
        // member: the institution's records name Organization/<member>
        assert_eq!(k.member, None);
        assert_ne!(k.org_ref(), "Organization/klinikum-nord");
        let m: FileConfig = toml::from_str("[[hl7v2.institution]]\nid = \"kn\"\nmember = \"klinikum-nord\"\n").unwrap();
        let kn = m.hl7v2.to_hl7_config().unwrap().institution_for("kn");
        assert_eq!(kn.member.as_deref(), Some("klinikum-nord"));
        assert_eq!(kn.org_ref(), "Organization/klinikum-nord");
        let badm: FileConfig = toml::from_str("[[hl7v2.institution]]\nid = \"kn\"\nmember = \"no/id\"\n").unwrap();
        assert!(badm.hl7v2.to_hl7_config().is_err());
    }

    #[test]
    fn auth_sections() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config"));
        let c = FileConfig::load(&dir.join("carebridge.example.toml"), true).unwrap();
        let a = c.auth.expect("example has [auth]").build(dir).expect("example builds");
        assert!(a.settings.clients.is_empty());
        let fixtures = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/auth"));
        let ok = "signing_key = \"gateway-es256.pem\"\n[[member]]\nid = \"m\"\ntype = \"pharmacy\"\n[[client]]\nclient_id = \"c\"\nmember = \"m\"\njwks = \"es384-client.jwks.json\"\nscopes = [\"system/MedicationRequest.rs\"]\n";
        let a: AuthSection = toml::from_str(ok).unwrap();
        let built = a.build(fixtures).unwrap();
        assert_eq!(built.client("c").unwrap().member_type, crate::auth::MemberType::Pharmacy);
        assert!(!built.settings.key.ephemeral);
        for bad in [
            ok.replace("member = \"m\"", "member = \"x\""),                        // unknown member
            ok.replace("system/MedicationRequest.rs", "patient/Patient.rs"),       // not a system scope
            ok.replace("es384-client.jwks.json", "missing.jwks.json"),             // unreadable JWKS
            ok.replace("type = \"pharmacy\"", "type = \"wizard\""),                // unknown member type
            ok.replace("gateway-es256.pem", "es384-client.jwks.json"),             // not a key
            format!("{ok}[[client]]\nclient_id = \"c\"\nmember = \"m\"\njwks = {{ keys = [] }}\nscopes = []\n"), // duplicate / empty JWKS
        ] {
            let parsed: Result<AuthSection, _> = toml::from_str(&bad);
            assert!(parsed.map_err(|e| e.to_string()).and_then(|a| a.build(fixtures).map(|_| ()).map_err(|e| e.to_string())).is_err(), "{bad}");
        }
    }
}
