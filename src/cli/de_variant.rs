//! A German-flavoured variant of Synthea data for benchmarks and tests of the
//! `profiles/de-region` pack: rewrites Synthea's US resources so they conform
//! to the pack's mandatory profiles — Patient (KVNR `http://fhir.de/sid/gkv/kvid-10`
//! with a valid check digit, the Synthea MRN kept as the local MRN slice),
//! Organization (IKNR `http://fhir.de/sid/arge-ik/iknr`), Practitioner (LANR
//! with check digit), Condition (ICD-10-GM with version and
//! Diagnosesicherheit), Procedure (OPS with version). Identifiers derive
//! deterministically from the resource id (SHA-256), so reruns are identical.
//!
//! `broken = true` gives the rejecting path: every KVNR gets a wrong check
//! digit (profile invariant `de-kvnr-2`). Check digits: KVNR per § 290 SGB V
//! (letter as 01–26, weights 1-2-1-2…, cross sums, mod 10); LANR (digits 1–6
//! weighted 4-9-4-9-4-9, (10 − sum mod 10) mod 10). Codes are illustrative:
//! a small SNOMED CT → ICD-10-GM/OPS table with a catch-all code, not a
//! clinical mapping.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const KVNR: &str = "http://fhir.de/sid/gkv/kvid-10";
const ICD: &str = "http://fhir.de/CodeSystem/bfarm/icd-10-gm";
const OPS: &str = "http://fhir.de/CodeSystem/bfarm/ops";

/// `n` decimal digits derived from `seed`.
fn digits(seed: &str, salt: &str, n: usize) -> Vec<u32> {
    let h = Sha256::digest(format!("{salt}:{seed}").as_bytes());
    h.iter().take(n).map(|b| u32::from(*b) % 10).collect()
}

/// The KVNR check digit of a capital letter and eight digits.
pub fn kvnr_check(letter: char, d: &[u32]) -> u32 {
    let n = (letter as u32).saturating_sub('A' as u32) + 1;
    let all: Vec<u32> = [n / 10, n % 10].into_iter().chain(d.iter().copied()).collect();
    let sum: u32 = all.iter().enumerate().map(|(i, x)| {
        let p = x * if i % 2 == 0 { 1 } else { 2 };
        p / 10 + p % 10
    }).sum();
    sum % 10
}

/// A KVNR for a resource id (valid check digit unless `broken`).
pub fn kvnr_for(id: &str, broken: bool) -> String {
    let d = digits(id, "kvnr", 9);
    let letter = char::from(b'A' + (d[8] * 2 + d[0]) as u8 % 26);
    let body = &d[..8];
    let check = (kvnr_check(letter, body) + u32::from(broken)) % 10;
    format!("{letter}{}{check}", body.iter().map(u32::to_string).collect::<String>())
}

/// A LANR (six digits, check digit, specialty group) for a resource id.
pub fn lanr_for(id: &str) -> String {
    let d = digits(id, "lanr", 6);
    let sum: u32 = d.iter().zip([4, 9, 4, 9, 4, 9]).map(|(a, w)| a * w).sum();
    format!("{}{}01", d.iter().map(u32::to_string).collect::<String>(), (10 - sum % 10) % 10)
}

fn icd_for(snomed: &str) -> (&'static str, &'static str) {
    match snomed {
        "44054006" => ("E11.9", "Diabetes mellitus, Typ 2"),
        "38341003" | "59621000" => ("I10.90", "Essentielle Hypertonie"),
        "195662009" | "444814009" => ("J06.9", "Akute Infektion der oberen Atemwege"),
        "10509002" => ("J20.9", "Akute Bronchitis"),
        "15777000" => ("R73.0", "Abnormer Glukosetoleranztest"),
        "162864005" | "408512008" => ("E66.99", "Adipositas"),
        "40055000" => ("J32.9", "Chronische Sinusitis"),
        _ => ("R69", "Unbekannte und nicht näher bezeichnete Krankheitsursachen"),
    }
}

fn ops_for(snomed: &str) -> &'static str {
    match snomed {
        "430193006" => "8-020.x",
        "710824005" | "710841007" => "1-207.0",
        _ => "8-930",
    }
}

/// Rewrite one Synthea resource in place (other types are left unchanged).
pub fn germanize(res: &mut Value, broken: bool) {
    let id = res.get("id").and_then(Value::as_str).unwrap_or("").to_owned();
    let seed = if id.is_empty() { res.to_string() } else { id };
    match res.get("resourceType").and_then(Value::as_str) {
        Some("Patient") => {
            let mrn = res["identifier"].as_array().into_iter().flatten().find(|i| i.pointer("/type/coding/0/code") == Some(&json!("MR"))).cloned();
            let mut ids = vec![json!({
                "type": {"coding": [{"system": "http://fhir.de/CodeSystem/identifier-type-de-basis", "code": "KVZ10"}]},
                "system": KVNR, "value": kvnr_for(&seed, broken)})];
            ids.extend(mrn);
            res["identifier"] = Value::Array(ids);
            if res.get("gender").is_none() {
                res["gender"] = json!("unknown");
            }
        }
        Some("Organization") => {
            let iknr = format!("26{}", digits(&seed, "iknr", 7).iter().map(u32::to_string).collect::<String>());
            res["identifier"] = json!([{"system": "http://fhir.de/sid/arge-ik/iknr", "value": iknr}]);
        }
        Some("Practitioner") => {
            res["identifier"] = json!([{"system": "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_ANR", "value": lanr_for(&seed)}]);
        }
        Some("Condition") => {
            let sct = res.pointer("/code/coding/0/code").and_then(Value::as_str).unwrap_or("").to_owned();
            let (code, display) = icd_for(&sct);
            res["code"] = json!({"coding": [{
                "extension": [{"url": "http://fhir.de/StructureDefinition/icd-10-gm-diagnosesicherheit",
                    "valueCoding": {"system": "https://fhir.kbv.de/CodeSystem/KBV_CS_SFHIR_ICD_DIAGNOSESICHERHEIT", "code": "G"}}],
                "system": ICD, "version": "2024", "code": code, "display": display}]});
        }
        Some("Procedure") => {
            let sct = res.pointer("/code/coding/0/code").and_then(Value::as_str).unwrap_or("").to_owned();
            res["code"] = json!({"coding": [{"system": OPS, "version": "2024", "code": ops_for(&sct)}]});
        }
        _ => {}
    }
}

/// Rewrite every entry of a Synthea Bundle.
pub fn germanize_bundle(bundle: &mut Value, broken: bool) {
    for e in bundle.get_mut("entry").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(r) = e.get_mut("resource") {
            germanize(r, broken);
        }
    }
}

/// `carebridge bench profiles`: start-up with packs (core compile, pack
/// snapshot generation), then the German variant of Synthea bundles through
/// the validator with the packs' mandatory profiles — the conforming path
/// (resources/s, resources with errors the profiles add) and the rejecting
/// path (broken KVNRs: how many Patients are rejected).
pub fn bench(bundles: &std::path::Path, packs: &[std::path::PathBuf], cache: Option<std::path::PathBuf>, limit: Option<usize>) -> Result<(), String> {
    use crate::validate::packs::{load_into, Member};
    use std::time::Instant;
    let cache = cache.unwrap_or_else(crate::fhir::definitions::package_cache_dir);
    let t0 = Instant::now();
    let mut v = crate::validate::Validator::load(&cache).map_err(|e| e.to_string())?;
    let core = t0.elapsed().as_secs_f64();
    let policy = load_into(&mut v, packs, &cache).map_err(|e| e.to_string())?;
    let total = t0.elapsed().as_secs_f64();
    println!("bench profiles: start-up {total:.2} s (core definitions {core:.2} s, {} packs {:.3} s)", packs.len(), total - core);
    let mut files = super::collect_files(&[bundles.to_path_buf()], &[".json"]).map_err(|e| e.to_string())?;
    if let Some(l) = limit {
        files.truncate(l);
    }
    let mut raw = vec![];
    for f in &files {
        let b: Value = serde_json::from_slice(&std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?).map_err(|e| format!("{}: {e}", f.display()))?;
        raw.push(b);
    }
    for broken in [false, true] {
        let t = Instant::now();
        let (mut n, mut profiled, mut added_errors, mut rejected_patients) = (0usize, 0usize, 0usize, 0usize);
        for b in &raw {
            let mut b = b.clone();
            germanize_bundle(&mut b, broken);
            for e in b.get("entry").and_then(Value::as_array).into_iter().flatten() {
                let Some(r) = e.get("resource") else { continue };
                let rt = r.get("resourceType").and_then(Value::as_str).unwrap_or("");
                let m = policy.mandatory(rt, Member::default());
                n += 1;
                let oo = v.validate_with_profiles(r, &m);
                if m.is_empty() {
                    continue;
                }
                profiled += 1;
                // errors that come from the pack's profiles (their messages name the profile)
                let from_pack = oo.issues.iter().filter(|i| i.severity <= crate::fhir::Severity::Error && m.iter().any(|p| i.diagnostics.contains(p))).count();
                added_errors += from_pack;
                if rt == "Patient" && from_pack > 0 {
                    rejected_patients += 1;
                }
            }
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{}: {n} resources ({profiled} under mandatory profiles) from {} bundles in {secs:.2} s = {:.0} resources/s (one thread, incl. rewrite); profile errors {added_errors}, Patients rejected {rejected_patients}",
            if broken { "rejecting path (wrong KVNR check digits)" } else { "conforming path" },
            raw.len(),
            n as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_digits() {
        // the documented example A123456780
        assert_eq!(kvnr_check('A', &[1, 2, 3, 4, 5, 6, 7, 8]), 0);
        let k = kvnr_for("x", false);
        let d: Vec<u32> = k[1..9].chars().map(|c| c.to_digit(10).unwrap()).collect();
        assert_eq!(k[9..].parse::<u32>().unwrap(), kvnr_check(k.chars().next().unwrap(), &d));
        assert_ne!(kvnr_for("x", true), k);
        assert_eq!(lanr_for("y").len(), 9);
        assert_eq!(kvnr_for("same", false), kvnr_for("same", false));
    }
}
