//! Validator conformance against `../shared/conformance/validator` (FHIR
//! test cases with the reference validator's expected outcomes). Reports, per
//! case, whether carebridge agrees on the verdict (valid/invalid) and on the
//! error count, and lists the disagreements. The assertion is a ratchet: the
//! verdict agreement may not fall below the floor reached so far.

use crate::common::shared_dir;
use carebridge::fhir::Severity;
use carebridge::validate::Validator;
use serde_json::Value;
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
const VERDICT_FLOOR: f64 = 50.0;

#[tokio::test]
async fn validator_conformance() {
    let Some(shared) = shared_dir() else {
        eprintln!("validator_conformance: skipped (../shared not found)");
        return;
    };
    let v = validator().await;
    let dir = shared.join("conformance/validator");
    let manifest: Vec<Value> = serde_json::from_slice(&std::fs::read(dir.join("MANIFEST.json")).unwrap()).unwrap();
    let (mut verdict_ok, mut count_ok, mut n) = (0, 0, 0);
    let mut disagreements = vec![];
    for case in &manifest {
        let name = case["name"].as_str().unwrap();
        let input = dir.join(name).join(case["input"].as_str().unwrap());
        let Ok(raw) = std::fs::read(&input) else { continue };
        n += 1;
        let expected_errors = case["errorCount"].as_u64().unwrap_or(0) as usize;
        let errors = match serde_json::from_slice::<Value>(&raw) {
            Ok(res) => v.validate(&res).issues.iter().filter(|i| i.severity <= Severity::Error).count(),
            Err(_) => 1,
        };
        let same_verdict = (errors == 0) == (expected_errors == 0);
        verdict_ok += usize::from(same_verdict);
        count_ok += usize::from(errors == expected_errors);
        if !same_verdict {
            disagreements.push(format!("{name} [{}]: expected {expected_errors} errors, got {errors}", case["module"].as_str().unwrap_or("")));
        }
    }
    let pct = 100.0 * verdict_ok as f64 / n as f64;
    eprintln!(
        "validator conformance: verdict agrees on {verdict_ok}/{n} ({pct:.1} %), error count on {count_ok}/{n} ({:.1} %)",
        100.0 * count_ok as f64 / n as f64
    );
    for d in &disagreements {
        eprintln!("  {d}");
    }
    assert!(pct >= VERDICT_FLOOR, "verdict agreement {pct:.1} % fell below {VERDICT_FLOOR} %");
}
