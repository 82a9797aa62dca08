//! `Patient/[id]/$summary` against the IPS profiles: the document of the
//! two-institution fixture validates against `Bundle-uv-ips` (and, through
//! its entry slices, Composition-uv-ips, Patient-uv-ips, …) of the
//! published `hl7.fhir.uv.ips#2.0.0` package with its snapshots; so does
//! the document of a patient without data (required sections with `emptyReason`).

use crate::common::*;
use carebridge::fhir::definitions::{package_cache_dir, CORE_PACKAGE};
use serde_json::Value;

const IPS: &str = "hl7.fhir.uv.ips#2.0.0";
const IPS_BUNDLE: &str = "http://hl7.org/fhir/uv/ips/StructureDefinition/Bundle-uv-ips";

#[tokio::test]
async fn summary_validates_against_the_ips_profiles() {
    let cache = package_cache_dir();
    let ips = cache.join(IPS).join("package");
    if !ips.is_dir() || !cache.join(CORE_PACKAGE).is_dir() {
        eprintln!("IPS validation of $summary: skipped (IPS or core package not installed)");
        return;
    }
    let mut v = carebridge::validate::Validator::load(&cache).expect("core");
    let mut files: Vec<_> = std::fs::read_dir(&ips).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if !(name.starts_with("StructureDefinition-") || name.starts_with("ValueSet-") || name.starts_with("CodeSystem-")) {
            continue;
        }
        let res: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        v.add_definition(&res).unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    let s = TestServer::start(Backend::Sqlite).await;
    for f in ["two-institutions.json", "no-data.json"] {
        let b: Value = serde_json::from_slice(&std::fs::read(fixtures().join("summary").join(f)).unwrap()).unwrap();
        assert_eq!(post_json(&s, "", &b).await.status, 200);
    }
    // two institutions' records of one person, and a patient the region knows nothing about
    for subject in ["kh-nord-4711", "hausarzt-eppendorf-88", "no-data"] {
        let r = get(&s, &format!("Patient/{subject}/$summary")).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let doc = r.json();
        let oo = v.validate_with_profiles(&doc, &[IPS_BUNDLE]);
        let oo = oo.to_json();
        let issues = oo["issue"].as_array().cloned().unwrap_or_default();
        for i in &issues {
            eprintln!("{subject}: {} {} {}", i["severity"], i["expression"], i["diagnostics"]);
        }
        let errors: Vec<&Value> = issues.iter().filter(|i| i["severity"] == "error" || i["severity"] == "fatal").collect();
        assert!(errors.is_empty(), "{subject}: {} errors against {IPS_BUNDLE}", errors.len());
    }
    s.stop().await;
}
