//! Regional profiles: the snapshot generator against the published IPS
//! snapshots (oracle), pack loading (both shipped packs, broken packs as
//! errors naming file and element), and the per-profile fixtures in
//! `fixtures/profiles/<pack>/{valid,invalid}`.

use carebridge::fhir::definitions::{package_cache_dir, CORE_PACKAGE};
use carebridge::validate::packs::SnapshotSource;
use carebridge::validate::snapshot::{self, unversioned, Resolver};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

const IPS: &str = "hl7.fhir.uv.ips#2.0.0";
const EXTENSIONS: &str = "hl7.fhir.uv.extensions.r4#5.3.0-ballot-tc1";

fn package(name: &str) -> PathBuf {
    package_cache_dir().join(name).join("package")
}

/// What the oracle compares per element (versions stripped from canonicals).
fn facets(e: &Value) -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    m.insert("min", e["min"].to_string());
    m.insert("max", e["max"].to_string());
    let types: Vec<String> = e["type"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let list = |k: &str| t[k].as_array().into_iter().flatten().filter_map(Value::as_str).map(unversioned).collect::<Vec<_>>().join(",");
            format!("{}[{}][{}]", t["code"].as_str().unwrap_or(""), list("profile"), list("targetProfile"))
        })
        .collect();
    m.insert("type", types.join(" "));
    let fixed: Vec<String> = e.as_object().into_iter().flatten().filter(|(k, _)| k.starts_with("fixed") || k.starts_with("pattern")).map(|(k, v)| format!("{k}={v}")).collect();
    m.insert("fixed/pattern", fixed.join(" "));
    let sl = &e["slicing"];
    m.insert(
        "slicing",
        if sl.is_null() { String::new() } else { format!("{} {} {}", sl["discriminator"], sl["rules"], sl["ordered"].as_bool().unwrap_or(false)) },
    );
    let b = &e["binding"];
    m.insert("binding", if b.is_null() { String::new() } else { format!("{} {}", b["strength"], b["valueSet"].as_str().map(unversioned).unwrap_or("")) });
    let mut keys: Vec<&str> = e["constraint"].as_array().into_iter().flatten().filter_map(|c| c["key"].as_str()).collect();
    keys.sort();
    m.insert("constraints", keys.join(","));
    m
}

/// Oracle: regenerate every IPS profile's snapshot from its differential and
/// compare with the snapshot IPS publishes (made by the HL7 Java tooling).
#[test]
fn snapshot_generator_matches_published_ips_snapshots() {
    let (core, ips, ext) = (package(CORE_PACKAGE), package(IPS), package(EXTENSIONS));
    if !ips.is_dir() || !core.is_dir() {
        eprintln!("snapshot oracle: skipped (IPS or core package not installed)");
        return;
    }
    let mut source = SnapshotSource::default();
    source.add_package_dir(&core).unwrap();
    source.add_package_dir(&ips).unwrap();
    if ext.is_dir() {
        source.add_package_dir(&ext).unwrap();
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&ips).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    let (mut profiles, mut elements, mut same_ids, mut all_equal) = (0, 0, 0, 0);
    let mut field_miss: BTreeMap<&str, usize> = BTreeMap::new();
    let mut failures = vec![];
    let mut examples = vec![];
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("StructureDefinition-") {
            continue;
        }
        let sd: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        if sd["derivation"] != "constraint" {
            continue;
        }
        profiles += 1;
        let base = source.snapshot_elements(sd["baseDefinition"].as_str().unwrap()).expect("base");
        let ours = match snapshot::generate(&sd, &base, &source) {
            Ok(x) => x,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let theirs = sd["snapshot"]["element"].as_array().unwrap();
        let ours = ours["snapshot"]["element"].as_array().unwrap();
        let ids = |l: &[Value]| l.iter().map(|e| e["id"].as_str().unwrap_or("").to_owned()).collect::<Vec<_>>();
        if ids(theirs) == ids(ours) {
            same_ids += 1;
        } else {
            let (a, b) = (ids(theirs), ids(ours));
            let missing: Vec<_> = a.iter().filter(|x| !b.contains(x)).take(3).collect();
            let extra: Vec<_> = b.iter().filter(|x| !a.contains(x)).take(3).collect();
            examples.push(format!("{name}: ids differ ({} vs {}); missing {missing:?}, extra {extra:?}", a.len(), b.len()));
        }
        for t in theirs {
            elements += 1;
            let Some(o) = ours.iter().find(|o| o["id"] == t["id"]) else {
                *field_miss.entry("element missing").or_default() += 1;
                continue;
            };
            let (ft, fo) = (facets(t), facets(o));
            let mut eq = true;
            for (k, v) in &ft {
                if fo.get(k) != Some(v) {
                    eq = false;
                    *field_miss.entry(k).or_default() += 1;
                    if examples.len() < 40 {
                        examples.push(format!("{name} {} {k}: published {v:?}, ours {:?}", t["id"], fo.get(k)));
                    }
                }
            }
            if eq {
                all_equal += 1;
            }
        }
    }
    let pct = 100.0 * all_equal as f64 / elements.max(1) as f64;
    eprintln!(
        "snapshot oracle (IPS 2.0.0): {profiles} profiles, {} generated, {same_ids} with identical element ids in order; \
         {elements} published elements, {all_equal} equal on all compared facets ({pct:.1} %); mismatches per facet: {field_miss:?}",
        profiles - failures.len()
    );
    for x in &failures {
        eprintln!("  failed: {x}");
    }
    for x in &examples {
        eprintln!("  {x}");
    }
    assert!(failures.is_empty(), "every IPS profile generates");
    // ratchet: every element id in the published order, every compared facet equal
    assert_eq!(same_ids, profiles, "element ids and order agree for every profile");
    assert_eq!(all_equal, elements, "every compared facet agrees ({pct:.1} %)");
}
