//! `carebridge import --institution X FILE`: a CSV/JSON export through the
//! institution's mapping (README "CSV / JSON import"), either straight into
//! a store (`--db`, the same write pipeline in-process, with a progress bar
//! over rows) or posted to a running gateway (`--server URL`, as
//! `POST /import/X`). Both end with the same summary — rows read, resources
//! written, rows rejected — and list every rejected row with its reason.
//! The format comes from the file extension (`.csv`, `.json`) unless
//! `--format` says otherwise.

use crate::ingest::import::{import, ImportReport, ImportRequest, Mappings};
use crate::services::Services;
use crate::translate::tabular::Format;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub enum Target {
    Server(String),
    Store { services: Services, mappings_dir: PathBuf },
}

/// What the command prints at the end.
#[derive(Debug, Clone, Default)]
pub struct CliReport {
    /// `rows read: …, rows imported: …, rows rejected: …, resources written: …, resources unchanged: …`
    pub summary: String,
    /// one line per issue: `row 7, column geburtsdatum: …`
    pub lines: Vec<String>,
    pub rows_rejected: usize,
    pub nothing_imported: bool,
}

impl From<&ImportReport> for CliReport {
    fn from(r: &ImportReport) -> Self {
        let outcome = r.to_outcome();
        CliReport {
            summary: r.summary(),
            lines: issue_lines(&outcome),
            rows_rejected: r.rows_rejected,
            nothing_imported: r.nothing_imported(),
        }
    }
}

fn issue_lines(outcome: &Value) -> Vec<String> {
    outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .skip(1)
        .map(|i| format!("{}: {}", i["severity"].as_str().unwrap_or(""), i["diagnostics"].as_str().unwrap_or("")))
        .collect()
}

/// The number after `name: ` in a summary line.
pub fn summary_count(summary: &str, name: &str) -> Option<usize> {
    let rest = &summary[summary.find(&format!("{name}: "))? + name.len() + 2..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

pub fn format_for(path: &Path, explicit: Option<&str>) -> Result<Format, String> {
    let f = match explicit {
        Some(f) => f.to_ascii_lowercase(),
        None => path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase(),
    };
    match f.as_str() {
        "csv" => Ok(Format::Csv),
        "json" => Ok(Format::Json),
        other => Err(format!("cannot tell the format of {} ({other:?}); use --format csv|json", path.display())),
    }
}

pub async fn run(target: Target, institution: &str, file: &Path, format: Format, all_or_nothing: bool, quiet: bool) -> Result<CliReport, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let file_name = file.file_name().and_then(|n| n.to_str()).unwrap_or("upload").to_owned();
    match target {
        Target::Store { services, mappings_dir } => {
            let mappings = Mappings::load_dir(&mappings_dir, true).map_err(|e| e.to_string())?;
            let mapping = mappings.get(institution).ok_or_else(|| {
                format!("unknown institution '{institution}': no {institution}.toml in {} (known: {})", mappings_dir.display(), mappings.institutions().join(", "))
            })?;
            // rows, roughly: lines of a CSV file; a JSON file gets a spinner
            let estimate = if format == Format::Csv { bytes.iter().filter(|b| **b == b'\n').count().saturating_sub(1) } else { 0 };
            let pb = if quiet {
                ProgressBar::hidden()
            } else if estimate > 0 {
                let pb = ProgressBar::new(estimate as u64);
                pb.set_style(
                    ProgressStyle::with_template("{bar:40} {pos}/{len} rows {per_sec} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                pb
            } else {
                ProgressBar::new_spinner()
            };
            let req = ImportRequest { bytes: bytes.into(), format, file_name, all_or_nothing, audit: None };
            let pb2 = pb.clone();
            let report = import(&services, mapping, req, &move |n| pb2.inc(n as u64)).await.map_err(|e| e.to_string())?;
            pb.finish_and_clear();
            Ok(CliReport::from(&report))
        }
        Target::Server(base) => {
            let pb = if quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
            pb.set_message(format!("posting {file_name} to {base}/import/{institution}"));
            pb.enable_steady_tick(std::time::Duration::from_millis(120));
            let ct = match format {
                Format::Csv => "text/csv; charset=utf-8",
                Format::Json => "application/json",
            };
            let mut url = format!("{}/import/{institution}?filename={}", base.trim_end_matches('/'), percent_encoding::utf8_percent_encode(&file_name, percent_encoding::NON_ALPHANUMERIC));
            if all_or_nothing {
                url.push_str("&all-or-nothing=true");
            }
            let resp = reqwest::Client::new().post(url).header("content-type", ct).body(bytes).send().await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
            let body: Value = serde_json::from_slice(&bytes).map_err(|e| format!("answer is not JSON: {e}"))?;
            pb.finish_and_clear();
            let first = body.pointer("/issue/0/diagnostics").and_then(Value::as_str).unwrap_or("").to_owned();
            if status != 200 && status != 422 {
                return Err(format!("HTTP {status}: {first}"));
            }
            let summary = first.split_once(": ").map(|(_, s)| s.to_owned()).unwrap_or(first);
            Ok(CliReport {
                rows_rejected: summary_count(&summary, "rows rejected").unwrap_or(0),
                nothing_imported: status == 422,
                lines: issue_lines(&body),
                summary,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_numbers() {
        let s = "rows read: 12, rows imported: 2, rows rejected: 10, resources written: 5, resources unchanged: 0";
        assert_eq!(summary_count(s, "rows read"), Some(12));
        assert_eq!(summary_count(s, "rows rejected"), Some(10));
        assert_eq!(summary_count(s, "resources unchanged"), Some(0));
        assert_eq!(summary_count(s, "nope"), None);
        assert_eq!(format_for(Path::new("a.CSV"), None).unwrap(), Format::Csv);
        assert!(format_for(Path::new("a.txt"), None).is_err());
        assert_eq!(format_for(Path::new("a.txt"), Some("json")).unwrap(), Format::Json);
    }
}
