//! Validator conformance against `../shared/conformance/validator` (FHIR
//! test cases with the reference validator's expected outcomes). Each case
//! loads its supporting definitions and profiles into a copy of the validator
//! (`Validator::add_definition`), validates the input against core and the
//! case's profiles (`validate_with_profiles`) and compares the verdict
//! (valid/invalid) and the error count with the reference validator's.
//! Disagreements are printed grouped by reason. The assertion is a ratchet:
//! the verdict agreement may not fall below the floor reached so far.

use crate::common::shared_dir;
use carebridge::fhir::Severity;
use carebridge::validate::{ValidateError, Validator};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::OnceCell;

static VALIDATOR: OnceCell<Arc<Validator>> = OnceCell::const_new();

/// The compiled validator, shared by every test of the binary.
pub async fn validator_arc() -> Arc<Validator> {
    VALIDATOR
        .get_or_init(|| async { carebridge::server::validator(None).await.expect("core package") })
        .await
        .clone()
}

pub async fn validator() -> Arc<Validator> {
    validator_arc().await
}

/// Verdict agreement reached so far (percent); raise it as the validator grows.
const VERDICT_FLOOR: f64 = 61.0;

#[tokio::test]
async fn validator_conformance() {
    let Some(shared) = shared_dir() else {
        eprintln!("validator_conformance: skipped (../shared not found)");
        return;
    };
    let base = validator().await;
    let dir = shared.join("conformance/validator");
    let manifest: Vec<Value> = serde_json::from_slice(&std::fs::read(dir.join("MANIFEST.json")).unwrap()).unwrap();
    let (mut verdict_ok, mut count_ok, mut n) = (0, 0, 0);
    let mut by_reason: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for case in &manifest {
        let name = case["name"].as_str().unwrap();
        let cdir = dir.join(name);
        let input = cdir.join(case["input"].as_str().unwrap());
        let Ok(raw) = std::fs::read(&input) else { continue };
        n += 1;
        let module = case["module"].as_str().unwrap_or("");
        // definitions: supporting first, then the profiles
        let mut v = (*base).clone();
        let mut no_snapshot = false;
        let mut profiles = vec![];
        let files = case["supporting"].as_array().into_iter().flatten().chain(case["profiles"].as_array().into_iter().flatten());
        for f in files.filter_map(Value::as_str) {
            let Some(def) = std::fs::read(cdir.join(f)).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()) else { continue };
            match v.add_definition(&def) {
                Err(ValidateError::NoSnapshot(_)) => no_snapshot = true,
                Err(e) => panic!("{name}: {f}: {e}"),
                Ok(()) => {}
            }
        }
        for f in case["profiles"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if let Some(url) = std::fs::read(cdir.join(f)).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()).and_then(|d| d["url"].as_str().map(str::to_owned)) {
                profiles.push(url);
            }
        }
        let expected_errors = case["errorCount"].as_u64().unwrap_or(0) as usize;
        let (errors, first) = match serde_json::from_slice::<Value>(&raw) {
            Ok(res) => {
                let ps: Vec<&str> = if no_snapshot { vec![] } else { profiles.iter().map(String::as_str).collect() };
                let oo = v.validate_with_profiles(&res, &ps);
                let errs: Vec<_> = oo.issues.iter().filter(|i| i.severity <= Severity::Error).collect();
                (errs.len(), errs.first().map(|i| format!("{}: {}", i.expression.join(","), i.diagnostics)).unwrap_or_default())
            }
            Err(_) => (1, "not JSON".into()),
        };
        let same_verdict = (errors == 0) == (expected_errors == 0);
        verdict_ok += usize::from(same_verdict);
        count_ok += usize::from(errors == expected_errors);
        if !same_verdict {
            let reason = if no_snapshot {
                "profile without snapshot (needs the snapshot generator)".to_owned()
            } else if module == "questionnaire" {
                "QuestionnaireResponse against its Questionnaire (not implemented)".to_owned()
            } else if errors > expected_errors {
                format!("[{module}] we report errors the reference validator does not")
            } else {
                format!("[{module}] we miss errors")
            };
            let detail = if first.is_empty() { String::new() } else { format!(" — first: {}", &first[..first.floor_char_boundary(160)]) };
            by_reason.entry(reason).or_default().push(format!("{name}: expected {expected_errors} errors, got {errors}{detail}"));
        }
    }
    let pct = 100.0 * verdict_ok as f64 / n as f64;
    eprintln!(
        "validator conformance: verdict agrees on {verdict_ok}/{n} ({pct:.1} %), error count on {count_ok}/{n} ({:.1} %)",
        100.0 * count_ok as f64 / n as f64
    );
    for (reason, cases) in &by_reason {
        eprintln!("{reason}: {} cases", cases.len());
        for c in cases {
            eprintln!("  {c}");
        }
    }
    assert!(pct >= VERDICT_FLOOR, "verdict agreement {pct:.1} % fell below {VERDICT_FLOOR} %");
}
