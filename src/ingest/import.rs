//! CSV / JSON import: one export file of a member institution → the pure
//! translator (`translate::tabular`) → the write pipeline → a report
//! (an OperationOutcome with a summary and one issue per problem).
//!
//! # Transactions (FHIR R4 `http.html` §3.1.0.11, `bundle.html`)
//! * Default: **one transaction per patient group**, so a group the pipeline
//!   rejects (a FHIR validation error, a conflicting write) does not sink
//!   the others; its rows are reported rejected with the pipeline's issues.
//!   Rows the translator rejected (schema, conversion) are never part of a
//!   group: the good rows of the same patient are still imported.
//! * `all_or_nothing`: one transaction for the whole file, and only when no
//!   row was rejected — otherwise nothing is stored.
//!
//! # Provenance and idempotency (`provenance.html`)
//! Before a group is written its targets are read: the Provenance's
//! `activity` becomes `UPDATE` when any target other than the institution's
//! Organization existed, else stays `CREATE`; when the group's Provenance
//! itself exists (the same file imported again) its `recorded` and
//! `activity` are kept. With deterministic ids and the pipeline's no-op
//! update, re-importing a file therefore writes nothing: the report counts
//! every resource as unchanged and no version moves.
//!
//! # Mappings
//! [`Mappings::load_dir`] reads `<dir>/*.toml` (institution = file name) and
//! the JSON Schema each names, checks them all and fails with file and line
//! on the first broken one — a start-up error, not a runtime surprise.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::fhir::{IssueType, Severity};
use crate::pipeline::{bundle_entries, EntryResult, Pipeline, PipelineError};
use crate::services::Services;
use crate::store::StoreError;
use crate::translate::tabular::{self, Format, Input, Mapping, MappingError, RowIssue, TabularError, Translation};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// a mapping file (or its schema) is broken — at start-up
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error("mappings directory {0}: {1}")]
    Dir(String, std::io::Error),
    /// the export cannot be read at all (not CSV/JSON, not UTF-8, no records)
    #[error(transparent)]
    Input(#[from] TabularError),
    /// a storage fault (not a problem of the data)
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The institutions that can import: one compiled mapping per file.
#[derive(Debug, Clone, Default)]
pub struct Mappings {
    by_institution: HashMap<String, Arc<Mapping>>,
}

impl Mappings {
    /// Loads every `*.toml` in `dir`. A missing directory is an error only
    /// when `required` (it was configured explicitly).
    pub fn load_dir(dir: &Path, required: bool) -> Result<Mappings, ImportError> {
        let shown = dir.display().to_string();
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(Mappings::default()),
            Err(e) => return Err(ImportError::Dir(shown, e)),
        };
        let mut files: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
        files.sort();
        let mut by_institution = HashMap::new();
        for f in files {
            let file = f.display().to_string();
            let institution = f.file_stem().and_then(|s| s.to_str()).unwrap_or("").to_owned();
            let text = std::fs::read_to_string(&f).map_err(|e| MappingError { file: file.clone(), line: None, message: e.to_string() })?;
            let schema_path = dir.join(Mapping::schema_file(&institution, &text));
            let schema_file = schema_path.display().to_string();
            let schema = std::fs::read_to_string(&schema_path)
                .map_err(|e| MappingError { file: schema_file.clone(), line: None, message: format!("the mapping's JSON Schema: {e}") })?;
            let m = Mapping::parse(&institution, &file, &text, &schema_file, &schema)?;
            by_institution.insert(institution, Arc::new(m));
        }
        Ok(Mappings { by_institution })
    }

    pub fn get(&self, institution: &str) -> Option<Arc<Mapping>> {
        self.by_institution.get(institution).cloned()
    }

    pub fn institutions(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.by_institution.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    pub fn insert(&mut self, m: Mapping) {
        self.by_institution.insert(m.institution.clone(), Arc::new(m));
    }
}

/// What to import and how.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    pub bytes: bytes::Bytes,
    pub format: Format,
    pub file_name: String,
    pub all_or_nothing: bool,
    /// who asked: each unit's transaction also writes this AuditEvent
    pub audit: Option<crate::auth::audit::AccessRecord>,
}

/// One reported problem.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportIssue {
    pub severity: Severity,
    pub code: IssueType,
    /// `row 7, column geburtsdatum`, `row 7`
    pub location: Vec<String>,
    /// FHIRPath of the element, for pipeline (validation) issues
    pub expression: Vec<String>,
    pub message: String,
}

/// The outcome of one import.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    pub institution: String,
    pub file_name: String,
    pub rows_read: usize,
    pub rows_imported: usize,
    pub rows_rejected: usize,
    /// new versions written (Provenance included)
    pub resources_written: usize,
    /// entries whose content was already stored (no new version)
    pub resources_unchanged: usize,
    /// `Provenance/<id>` of each group stored
    pub provenance: Vec<String>,
    pub issues: Vec<ReportIssue>,
    pub all_or_nothing: bool,
}

impl ImportReport {
    /// Nothing was imported although there were rows (or there were none).
    pub fn nothing_imported(&self) -> bool {
        self.rows_imported == 0
    }

    pub fn summary(&self) -> String {
        format!(
            "rows read: {}, rows imported: {}, rows rejected: {}, resources written: {}, resources unchanged: {}",
            self.rows_read, self.rows_imported, self.rows_rejected, self.resources_written, self.resources_unchanged
        )
    }

    /// The report as an OperationOutcome: the summary (information) first,
    /// then every issue with its row/column in `location`.
    pub fn to_outcome(&self) -> Value {
        let mut issues = vec![json!({
            "severity": "information",
            "code": "informational",
            "diagnostics": format!("import of {} for {}: {}", self.file_name, self.institution, self.summary()),
        })];
        for i in &self.issues {
            let mut m = serde_json::Map::new();
            m.insert("severity".into(), i.severity.as_str().into());
            m.insert("code".into(), i.code.as_str().into());
            let diag = match i.location.as_slice() {
                [] => i.message.clone(),
                [one] => format!("{one}: {}", i.message),
                many => format!("{}: {}", many.join("; "), i.message),
            };
            m.insert("diagnostics".into(), diag.into());
            if !i.location.is_empty() {
                m.insert("location".into(), i.location.clone().into());
            }
            if !i.expression.is_empty() {
                m.insert("expression".into(), i.expression.clone().into());
            }
            issues.push(Value::Object(m));
        }
        json!({"resourceType": "OperationOutcome", "issue": issues})
    }
}

fn from_row_issue(i: &RowIssue) -> ReportIssue {
    ReportIssue { severity: i.severity, code: i.code, location: i.location().into_iter().collect(), expression: vec![], message: i.message.clone() }
}

/// Progress callback: rows finished so far (translated or rejected).
pub type Progress<'a> = &'a (dyn Fn(usize) + Send + Sync);

/// Imports one export with `mapping` (see the module doc for the rules).
/// `Err` only for unreadable input and storage faults; data problems are
/// issues in the report.
pub async fn import(services: &Services, mapping: Arc<Mapping>, req: ImportRequest, progress: Progress<'_>) -> Result<ImportReport, ImportError> {
    let received = crate::fhir::datetime::format_instant(crate::fhir::datetime::now_micros());
    let (m2, bytes, format, name) = (mapping.clone(), req.bytes.clone(), req.format, req.file_name.clone());
    let t: Translation = tokio::task::spawn_blocking(move || {
        tabular::translate(&m2, &Input { bytes: &bytes, format, file_name: &name }, &received)
    })
    .await
    .map_err(|e| ImportError::Input(TabularError::Unreadable(format!("translation task failed: {e}"))))??;

    let mut report = ImportReport {
        institution: mapping.institution.clone(),
        file_name: req.file_name.clone(),
        rows_read: t.rows_read,
        rows_rejected: t.rejected_rows.len(),
        all_or_nothing: req.all_or_nothing,
        issues: t.issues.iter().map(from_row_issue).collect(),
        ..Default::default()
    };
    progress(t.rejected_rows.len());
    if t.rows_read == 0 {
        report.issues.push(ReportIssue {
            severity: Severity::Error,
            code: IssueType::Required,
            location: vec![],
            expression: vec![],
            message: "the file holds no rows".into(),
        });
        return Ok(report);
    }

    if req.all_or_nothing {
        if !t.rejected_rows.is_empty() {
            report.issues.push(all_or_nothing_issue(t.rejected_rows.len()));
            return Ok(report);
        }
        let (bundle, entry_rows) = merge_groups(&t);
        let rows = t.groups.iter().flat_map(|g| g.rows.iter().copied()).collect();
        let mut units = vec![Unit { bundle, entry_rows, rows }];
        run_units(services, &mut units, &mut report, progress, true, req.audit.clone()).await?;
        return Ok(report);
    }

    let mut units: Vec<Unit> = t.groups.into_iter().map(|g| Unit { bundle: g.bundle, entry_rows: g.entry_rows, rows: g.rows }).collect();
    run_units(services, &mut units, &mut report, progress, false, req.audit.clone()).await?;
    Ok(report)
}

fn all_or_nothing_issue(bad: usize) -> ReportIssue {
    ReportIssue {
        severity: Severity::Error,
        code: IssueType::Processing,
        location: vec![],
        expression: vec![],
        message: format!("all-or-nothing: nothing was imported because {bad} row(s) were rejected"),
    }
}

/// One transaction for the whole file: every group's entries, the
/// institution's Organization once.
fn merge_groups(t: &Translation) -> (Value, Vec<Vec<usize>>) {
    let mut entries = vec![];
    let mut rows: Vec<Vec<usize>> = vec![];
    let mut seen: HashMap<String, usize> = HashMap::new();
    for g in &t.groups {
        let Some(es) = g.bundle["entry"].as_array() else { continue };
        for (e, r) in es.iter().zip(&g.entry_rows) {
            let url = e["fullUrl"].as_str().unwrap_or_default().to_owned();
            match seen.get(&url) {
                Some(&i) => rows[i].extend(r.iter().copied()),
                None => {
                    seen.insert(url, entries.len());
                    entries.push(e.clone());
                    rows.push(r.clone());
                }
            }
        }
    }
    (json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}), rows)
}

/// Reads the current version of every entry's resource (None: absent or deleted).
async fn current_versions(services: &Services, bundle: &Value) -> Result<Vec<Option<(i64, Option<bytes::Bytes>)>>, StoreError> {
    let mut out = vec![];
    for e in bundle["entry"].as_array().into_iter().flatten() {
        let (t, id) = (e["resource"]["resourceType"].as_str().unwrap_or(""), e["resource"]["id"].as_str().unwrap_or(""));
        let row = services.store.read(t, id).await?;
        out.push(row.filter(|r| !r.deleted).map(|r| (r.version, r.body.clone())));
    }
    Ok(out)
}

/// Sets the Provenance's activity from what existed (module doc).
fn adjust_provenance(bundle: &mut Value, before: &[Option<(i64, Option<bytes::Bytes>)>]) {
    let Some(entries) = bundle["entry"].as_array_mut() else { return };
    let mut existed = false;
    let mut provs = vec![];
    for (i, e) in entries.iter().enumerate() {
        match e["resource"]["resourceType"].as_str() {
            Some("Provenance") => provs.push(i),
            Some("Organization") if i == 0 => {}
            _ => existed |= before.get(i).is_some_and(Option::is_some),
        }
    }
    for i in provs {
        let old: Option<Value> =
            before.get(i).and_then(|b| b.as_ref()).and_then(|(_, body)| body.as_ref()).and_then(|b| serde_json::from_slice(b).ok());
        let prov = &mut entries[i]["resource"];
        match old {
            Some(old) => {
                let activity = old.pointer("/activity/coding/0/code").and_then(Value::as_str).unwrap_or("CREATE").to_owned();
                tabular::set_provenance_activity(prov, &activity, old["recorded"].as_str());
            }
            None if existed => tabular::set_provenance_activity(prov, "UPDATE", None),
            None => {}
        }
    }
}

/// Rows of the entry an issue points at (`Bundle.entry[n]…`), if it names one.
fn entry_index(expr_or_diag: &str) -> Option<usize> {
    let rest = &expr_or_diag[expr_or_diag.find("Bundle.entry[")? + "Bundle.entry[".len()..];
    rest[..rest.find(']')?].parse().ok()
}

/// One transaction to run: a group's bundle (or the whole file's) and the
/// rows behind each entry.
struct Unit {
    bundle: Value,
    entry_rows: Vec<Vec<usize>>,
    rows: Vec<usize>,
}

async fn run_units(services: &Services, units: &mut [Unit], report: &mut ImportReport, progress: Progress<'_>, whole_file: bool, audit: Option<crate::auth::audit::AccessRecord>) -> Result<(), ImportError> {
    for Unit { bundle, entry_rows, rows } in units.iter_mut() {
        let before = current_versions(services, bundle).await?;
        adjust_provenance(bundle, &before);
        let entries = bundle_entries(bundle).map_err(|m| ImportError::Input(TabularError::Unreadable(m)))?;
        match Pipeline::new(services).audited(audit.clone()).transaction(entries).await {
            Ok(results) => {
                report.rows_imported += rows.len();
                count_writes(report, &results, &before);
            }
            Err(PipelineError::Store(e)) if !matches!(e, StoreError::Conflict(_)) => return Err(ImportError::Store(e)),
            Err(e) => {
                let oo = e.outcome();
                report.rows_rejected += rows.len();
                for i in &oo.issues {
                    let at = i.expression.iter().find_map(|x| entry_index(x)).or_else(|| entry_index(&i.diagnostics));
                    let mut rs: Vec<usize> = match at.and_then(|n| entry_rows.get(n)) {
                        Some(r) => r.clone(),
                        None => rows.clone(),
                    };
                    rs.sort_unstable();
                    rs.dedup();
                    let location = vec![format!("{} {}", if rs.len() == 1 { "row" } else { "rows" }, tabular::row_ranges(&rs))];
                    report.issues.push(ReportIssue {
                        severity: i.severity,
                        code: i.code,
                        location,
                        expression: i.expression.clone(),
                        message: format!("not stored ({}): {}", if whole_file { "the file's transaction failed" } else { "the patient group's transaction failed" }, i.diagnostics),
                    });
                }
                if whole_file {
                    report.issues.push(all_or_nothing_issue(rows.len()));
                }
            }
        }
        progress(rows.len());
    }
    Ok(())
}

fn count_writes(report: &mut ImportReport, results: &[EntryResult], before: &[Option<(i64, Option<bytes::Bytes>)>]) {
    for (i, r) in results.iter().enumerate() {
        let prev = before.get(i).and_then(|b| b.as_ref()).map(|(v, _)| *v);
        if r.version.is_some() && r.version != prev {
            report.resources_written += 1;
        } else {
            report.resources_unchanged += 1;
        }
        if let Some((t, id)) = r.target.as_ref().filter(|(t, _)| t == "Provenance") {
            report.provenance.push(format!("{t}/{id}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_index_from_expression() {
        assert_eq!(entry_index("Bundle.entry[12].resource.valueQuantity"), Some(12));
        assert_eq!(entry_index("Bundle.entry[3]: bad"), Some(3));
        assert_eq!(entry_index("Patient.name"), None);
    }

    #[test]
    fn shipped_mappings_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
        let m = Mappings::load_dir(&dir, true).unwrap();
        assert!(m.institutions().contains(&"pflegedienst-sonnenschein"), "{:?}", m.institutions());
        assert!(m.institutions().contains(&"kommune-havnby"), "{:?}", m.institutions());
        assert!(Mappings::load_dir(&dir.join("nope"), false).unwrap().institutions().is_empty());
        assert!(Mappings::load_dir(&dir.join("nope"), true).is_err());
    }
}
