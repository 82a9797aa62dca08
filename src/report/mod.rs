//! Insurer reports and bulk data: measures as data, `$evaluate-measure`,
//! small-cell suppression, and the Bulk Data `$export`.
//!
//! Specifications: FHIR R4 `measure.html`, `measurereport.html`,
//! `measure-operation-evaluate-measure.html` (periodStart/periodEnd,
//! reportType `summary` | `subject-list` | `subject`, `subject`); the
//! population codes of `http://terminology.hl7.org/CodeSystem/measure-population`;
//! the CQF Measures extensions `cqfm-populationBasis`, `cqfm-scoring` (per
//! group) and `cqfm-aggregateMethod`; FHIRPath 2.0.0 (population and
//! stratifier criteria with language `text/fhirpath`); `data-absent-reason`
//! `masked` for suppressed counts; FHIR Bulk Data Access IG 2.0.0
//! (`https://hl7.org/fhir/uv/bulkdata/export.html`).
//!
//! | file | what |
//! |---|---|
//! | `access.rs` | the one row filter every report and export row passes (care relationship and Consent, `auth::bulk`) |
//! | `measure.rs` | Measure JSON → compiled measure (FHIRPath compiled once per version) |
//! | `facts.rs` | the report facts: a compact, incrementally refreshed projection of Patient/Encounter/Condition/Organization grouped per person (MPI) |
//! | `evaluate.rs` | population membership, stratifiers, observations per basis item |
//! | `suppress.rs` | small-cell suppression with complementary suppression |
//! | `output.rs` | MeasureReport JSON and CSV |
//! | `export.rs` | Bulk Data export jobs (durable), NDJSON writer, status/manifest |
//! | `deid.rs` | the de-identification policy for insurer exports |
//!
//! Invariant: every stored row a report or an export reads passes
//! an [`access::RowFilter`] before it counts or leaves the process.
//! Invariant: a report for the insurer role is `summary` only, carries no
//! patient or encounter reference, and every count passed suppression.

pub mod access;
pub mod deid;
pub mod evaluate;
pub mod export;
pub mod facts;
pub mod measure;
pub mod output;
pub mod suppress;

use crate::store::StoreError;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    NotFound(String),
    /// a bad parameter or an unusable Measure (the client's mistake)
    #[error("{0}")]
    Invalid(String),
    /// the caller's role may not ask for this
    #[error("{0}")]
    Forbidden(String),
    /// a measure expression failed at run time
    #[error("{0}")]
    Unprocessable(String),
    /// the export job or file is gone (cancelled, expired)
    #[error("{0}")]
    Gone(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// local file system failure (export directory)
    #[error("export files: {0}")]
    Io(String),
}

/// `[report]` settings.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// counts below this are suppressed in summary reports (default 5)
    pub min_cell: u64,
    /// where export NDJSON files are written (default: `<temp>/carebridge-export`)
    pub export_dir: PathBuf,
    /// how long finished export files stay available, seconds (default 24 h)
    pub export_ttl_secs: u64,
    /// key of the keyed hash behind pseudonymous ids in de-identified exports;
    /// set it in production (default: a fixed development key, logged as such)
    pub pseudonym_key: String,
    /// extra Measure JSON files loaded at start besides the built-in ones
    pub measures_dir: Option<PathBuf>,
    /// resources per NDJSON page read from the store
    pub export_page: usize,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            min_cell: 5,
            export_dir: std::env::temp_dir().join("carebridge-export"),
            export_ttl_secs: 24 * 3600,
            pseudonym_key: "carebridge-development-pseudonym-key".into(),
            measures_dir: None,
            export_page: 2000,
        }
    }
}

/// Report state shared by the API: configuration, the measure library, the facts.
pub struct Reports {
    pub config: ReportConfig,
    pub model: Arc<crate::fhirpath::ModelInfo>,
    /// built-in and configured measures by id and by canonical url
    builtin: HashMap<String, Arc<measure::CompiledMeasure>>,
    /// compiled stored Measures by `id@version`
    compiled: RwLock<HashMap<String, Arc<measure::CompiledMeasure>>>,
    pub facts: facts::Facts,
    /// export jobs running in this process (cancellation flags)
    pub running: export::Running,
}

/// The built-in measures (`fixtures/measures/*.json`), compiled into the binary.
pub const BUILTIN_MEASURES: &[(&str, &str)] = &[
    ("admissions", include_str!("../../fixtures/measures/admissions.json")),
    ("length-of-stay", include_str!("../../fixtures/measures/length-of-stay.json")),
    ("readmission-30d", include_str!("../../fixtures/measures/readmission-30d.json")),
    ("top-diagnoses", include_str!("../../fixtures/measures/top-diagnoses.json")),
    ("home-treatment-share", include_str!("../../fixtures/measures/home-treatment-share.json")),
    ("hf-gp-followup-7d", include_str!("../../fixtures/measures/hf-gp-followup-7d.json")),
];

impl Reports {
    pub fn new(config: ReportConfig, model: Arc<crate::fhirpath::ModelInfo>) -> Result<Reports, ReportError> {
        let mut builtin = HashMap::new();
        let mut sources: Vec<(String, String)> = BUILTIN_MEASURES.iter().map(|(n, s)| (n.to_string(), s.to_string())).collect();
        if let Some(dir) = &config.measures_dir {
            let mut files: Vec<_> = std::fs::read_dir(dir)
                .map_err(|e| ReportError::Io(format!("{}: {e}", dir.display())))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            files.sort();
            for f in files {
                let s = std::fs::read_to_string(&f).map_err(|e| ReportError::Io(format!("{}: {e}", f.display())))?;
                sources.push((f.display().to_string(), s));
            }
        }
        for (name, src) in sources {
            let json: serde_json::Value =
                serde_json::from_str(&src).map_err(|e| ReportError::Invalid(format!("measure {name}: {e}")))?;
            let m = Arc::new(measure::CompiledMeasure::compile(&json).map_err(|e| ReportError::Invalid(format!("measure {name}: {e}")))?);
            builtin.insert(m.id.clone(), m.clone());
            if let Some(u) = &m.url {
                builtin.insert(u.clone(), m.clone());
                if let Some(v) = &m.version {
                    builtin.insert(format!("{u}|{v}"), m.clone());
                }
            }
        }
        Ok(Reports { config, model, builtin, compiled: RwLock::new(HashMap::new()), facts: facts::Facts::default(), running: Default::default() })
    }

    /// The built-in measures (one entry per measure).
    pub fn builtin_measures(&self) -> Vec<Arc<measure::CompiledMeasure>> {
        let mut v: Vec<_> = self.builtin.iter().filter(|(k, m)| **k == m.id).map(|(_, m)| m.clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// A built-in measure by id, canonical url or `url|version`.
    pub fn builtin(&self, key: &str) -> Option<Arc<measure::CompiledMeasure>> {
        self.builtin.get(key).cloned()
    }

    /// Compile (or take from the cache) a stored Measure resource.
    pub fn compile_stored(&self, id: &str, version: i64, json: &serde_json::Value) -> Result<Arc<measure::CompiledMeasure>, ReportError> {
        let key = format!("{id}@{version}");
        if let Some(m) = self.compiled.read().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(m);
        }
        let m = Arc::new(measure::CompiledMeasure::compile(json).map_err(ReportError::Invalid)?);
        if let Ok(mut c) = self.compiled.write() {
            c.insert(key, m.clone());
        }
        Ok(m)
    }
}
