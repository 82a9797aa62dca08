//! `carebridge validate FILE…`: offline validation against the R4 core
//! definitions (the same validator the gateway runs on write). Prints each
//! file's verdict and its errors (all issues with `--verbose`) and a closing
//! summary; the exit status is non-zero when any file has errors.
//! `--pack DIR` loads the definitions in DIR (StructureDefinitions with
//! snapshot, ValueSets, CodeSystems); `--profile URL` validates against that
//! profile too (files of other types: core only).

use crate::fhir::definitions::package_cache_dir;
use crate::fhir::Severity;
use crate::validate::Validator;
use std::path::PathBuf;

/// The validator with the definitions of each pack folder added.
pub fn load_with_packs(cache: Option<PathBuf>, packs: &[PathBuf]) -> Result<Validator, String> {
    let mut v = Validator::load(&cache.unwrap_or_else(package_cache_dir)).map_err(|e| e.to_string())?;
    for f in super::collect_files(packs, &[".json"]).map_err(|e| e.to_string())? {
        let raw = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let def: serde_json::Value = serde_json::from_slice(&raw).map_err(|e| format!("{}: {e}", f.display()))?;
        if matches!(def.get("resourceType").and_then(|t| t.as_str()), Some("StructureDefinition" | "ValueSet" | "CodeSystem" | "Bundle")) {
            v.add_definition(&def).map_err(|e| format!("{}: {e}", f.display()))?;
        }
    }
    Ok(v)
}

pub fn run(paths: &[PathBuf], cache: Option<PathBuf>, verbose: bool, profiles: &[String], packs: &[PathBuf]) -> Result<(), String> {
    let files = super::collect_files(paths, &[".json"]).map_err(|e| e.to_string())?;
    let t0 = std::time::Instant::now();
    let v = load_with_packs(cache, packs)?;
    eprintln!("definitions compiled in {:.2} s", t0.elapsed().as_secs_f64());
    let (mut bad, mut resources) = (0usize, 0usize);
    let t1 = std::time::Instant::now();
    for f in &files {
        let raw = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let res: serde_json::Value = match serde_json::from_slice(&raw) {
            Ok(v) => v,
            Err(e) => {
                println!("INVALID {}: not JSON: {e}", f.display());
                bad += 1;
                continue;
            }
        };
        resources += 1 + res.get("entry").and_then(|e| e.as_array()).map_or(0, Vec::len);
        let rt = res.get("resourceType").and_then(|t| t.as_str()).unwrap_or("");
        let ps: Vec<&str> =
            profiles.iter().map(String::as_str).filter(|p| v.definition(p).is_none_or(|sd| sd.type_name == rt)).collect();
        let oo = v.validate_with_profiles(&res, &ps);
        let errors: Vec<_> = oo.issues.iter().filter(|i| i.severity <= Severity::Error).collect();
        if errors.is_empty() {
            println!("valid   {}", f.display());
        } else {
            bad += 1;
            println!("INVALID {} ({} errors)", f.display(), errors.len());
        }
        for i in oo.issues.iter().filter(|i| verbose || i.severity <= Severity::Error) {
            println!("  {:<11} {:<13} {}: {}", i.severity.as_str(), i.code.as_str(), i.expression.join(", "), i.diagnostics);
        }
    }
    let secs = t1.elapsed().as_secs_f64();
    println!(
        "{} files, {bad} invalid; {resources} resources in {secs:.2} s ({:.0} resources/s, one thread)",
        files.len(),
        resources as f64 / secs.max(1e-9)
    );
    if bad == 0 { Ok(()) } else { Err(format!("{bad} invalid files")) }
}
