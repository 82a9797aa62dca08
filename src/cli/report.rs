//! `carebridge report`: evaluate one measure over a store (built-in by id or
//! canonical URL, or a stored Measure by id) and print the MeasureReport
//! JSON or CSV; a progress bar follows the facts load and the evaluation.
//! Runs as the local operator, so `summary` reports are suppressed exactly
//! as the API's (`[report] min_cell`).

use crate::report::evaluate::{self, EvalRequest};
use crate::report::output::{self, ReportType};
use crate::report::{ReportConfig, Reports};
use crate::server::{self, ServerOptions};
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;

pub struct Args {
    pub measure: String,
    pub period_start: String,
    pub period_end: String,
    pub stratify: Vec<String>,
    pub format: String,
    pub report_type: String,
    pub quiet: bool,
}

pub async fn run(opts: &ServerOptions, config: ReportConfig, a: Args) -> Result<(), String> {
    let rtype = match a.report_type.as_str() {
        "summary" => ReportType::Summary,
        "subject-list" => ReportType::SubjectList,
        o => return Err(format!("--report-type {o}: expected summary or subject-list")),
    };
    if !matches!(a.format.as_str(), "json" | "csv") {
        return Err(format!("--format {}: expected json or csv", a.format));
    }
    let services = server::services(opts).await.map_err(|e| e.to_string())?;
    let reports = Reports::new(config, services.validator.fhirpath_model()).map_err(|e| e.to_string())?;
    let m = match reports.builtin(&a.measure) {
        Some(m) => m,
        None => {
            let row = services.store.read("Measure", &a.measure).await.map_err(|e| e.to_string())?;
            let body = row.filter(|r| !r.deleted).and_then(|r| r.body).ok_or(format!("measure '{}' is not known", a.measure))?;
            let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            Arc::new(crate::report::measure::CompiledMeasure::compile(&json)?)
        }
    };
    let bar = if a.quiet { ProgressBar::hidden() } else { ProgressBar::new_spinner() };
    bar.set_style(ProgressStyle::with_template("{spinner} {msg} {pos} [{elapsed}]").unwrap_or_else(|_| ProgressStyle::default_spinner()));
    bar.set_message("reading facts");
    let b2 = bar.clone();
    let tick = move |n: u64| b2.set_position(n);
    let snap = reports.facts.snapshot(services.store.as_ref(), Some(&tick)).await.map_err(|e| e.to_string())?;
    bar.set_message("evaluating persons");
    bar.set_position(0);
    let req = EvalRequest {
        period_start: a.period_start,
        period_end: a.period_end,
        subject: None,
        want_subjects: rtype != ReportType::Summary,
        stratify: (!a.stratify.is_empty()).then_some(a.stratify),
    };
    let caller = crate::auth::Caller::dev_operator();
    let filter = crate::report::access::RowFilter::for_report(&services, &caller, rtype != ReportType::Summary).await.map_err(|e| e.to_string())?;
    let b3 = bar.clone();
    let tick2 = move |n: u64| b3.set_position(n);
    let tally = evaluate::evaluate(&m, &snap, &reports.model, &filter, &req, Some(&tick2)).map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    let k = reports.config.min_cell;
    let masks = (rtype == ReportType::Summary).then(|| output::masks(&m, &tally, k));
    if a.format == "csv" {
        print!("{}", output::csv(&m, &tally, &req, masks.as_deref()));
    } else {
        let now = crate::fhir::datetime::format_instant(crate::fhir::datetime::now_micros());
        let r = output::measure_report(&m, &tally, &req, rtype, masks.as_deref(), k, &now);
        println!("{}", serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?);
    }
    Ok(())
}
