//! `carebridge validate FILE…`: offline validation against the R4 core
//! definitions (the same validator the gateway runs on write). Prints each
//! file's verdict and its errors (all issues with `--verbose`) and a closing
//! summary; the exit status is non-zero when any file has errors.
//!
//! `--pack DIR` loads profile packs (their mandatory profiles apply to every
//! resource, also to each entry of a Bundle); `--profile URL` adds a profile
//! every top-level resource is checked against.

use crate::fhir::definitions::package_cache_dir;
use crate::fhir::Severity;
use crate::validate::packs::Member;
use crate::validate::Validator;
use std::path::PathBuf;

/// The validator with the packs in `packs` loaded (snapshots generated from
/// their differentials), and the packs' mandatory-profile policy.
pub fn load_with_packs(cache: Option<PathBuf>, packs: &[PathBuf]) -> Result<(Validator, crate::validate::packs::Policy), String> {
    let cache = cache.unwrap_or_else(package_cache_dir);
    let mut v = Validator::load(&cache).map_err(|e| e.to_string())?;
    let policy = crate::validate::packs::load_into(&mut v, packs, &cache).map_err(|e| e.to_string())?;
    Ok((v, policy))
}

pub fn run(paths: &[PathBuf], cache: Option<PathBuf>, verbose: bool, packs: &[PathBuf], profiles: &[String]) -> Result<(), String> {
    let files = super::collect_files(paths, &[".json"]).map_err(|e| e.to_string())?;
    let t0 = std::time::Instant::now();
    let cache = cache.unwrap_or_else(package_cache_dir);
    let mut v = Validator::load(&cache).map_err(|e| e.to_string())?;
    let core_secs = t0.elapsed().as_secs_f64();
    let policy = crate::validate::packs::load_into(&mut v, packs, &cache).map_err(|e| e.to_string())?;
    eprintln!(
        "definitions compiled in {:.2} s (core {core_secs:.2} s, {} packs {:.3} s)",
        t0.elapsed().as_secs_f64(),
        packs.len(),
        t0.elapsed().as_secs_f64() - core_secs
    );
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
        let mut wanted = policy.mandatory(rt, Member::default());
        wanted.extend(profiles.iter().map(String::as_str));
        let mut oo = v.validate_with_profiles(&res, &wanted);
        // a Bundle's entries: their mandatory profiles too
        for (i, e) in res.get("entry").and_then(|e| e.as_array()).into_iter().flatten().enumerate() {
            let Some(r) = e.get("resource") else { continue };
            let ert = r.get("resourceType").and_then(|t| t.as_str()).unwrap_or("");
            let m = policy.mandatory(ert, Member::default());
            if m.is_empty() {
                continue;
            }
            for mut issue in v.validate_with_profiles(r, &m).issues {
                issue.expression = issue.expression.iter().map(|x| format!("Bundle.entry[{i}].resource.{}", x.split_once('.').map_or("", |s| s.1))).collect();
                if !oo.issues.contains(&issue) {
                    oo.issues.push(issue);
                }
            }
        }
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
