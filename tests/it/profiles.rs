//! Regional profiles: the snapshot generator against the published IPS
//! snapshots (oracle), pack loading (both shipped packs, broken packs as
//! errors naming file and element), and the per-profile fixtures in
//! `fixtures/profiles/<pack>/{valid,invalid}`.

use carebridge::fhir::definitions::{package_cache_dir, CORE_PACKAGE};
use carebridge::validate::packs::{self, SnapshotSource};
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

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn pack_dirs() -> Vec<PathBuf> {
    vec![repo().join("profiles/de-region"), repo().join("profiles/cn-alliance")]
}

/// Both shipped packs load: every StructureDefinition gets a snapshot, and
/// the manifests' mandatory profiles exist.
#[test]
fn shipped_packs_load_with_snapshots() {
    let core = package(CORE_PACKAGE);
    if !core.is_dir() {
        eprintln!("packs: skipped (core package not installed)");
        return;
    }
    let loaded = packs::load(&pack_dirs(), &[core]).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = loaded.iter().map(|p| p.manifest.name.as_str()).collect();
    assert_eq!(names, ["de-region", "cn-alliance"]);
    assert_eq!(loaded[0].structure_definitions.len(), 13);
    assert_eq!(loaded[1].structure_definitions.len(), 4);
    assert_eq!((loaded[0].value_sets.len(), loaded[0].code_systems.len()), (1, 1));
    assert_eq!((loaded[1].value_sets.len(), loaded[1].code_systems.len()), (2, 2));
    for sd in loaded.iter().flat_map(|p| &p.structure_definitions) {
        let snap = sd["snapshot"]["element"].as_array().unwrap();
        assert!(snap.len() > sd["differential"]["element"].as_array().unwrap().len(), "{}", sd["url"]);
    }
    let kvnr = loaded[0].structure_definitions.iter().find(|sd| sd["id"] == "de-patient").unwrap()["snapshot"]["element"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == "Patient.identifier:kvnr.system")
        .cloned()
        .unwrap();
    assert_eq!(kvnr["fixedUri"], "http://fhir.de/sid/gkv/kvid-10");
    assert_eq!(kvnr["min"], 1);
}

/// A broken pack is a start-up error that names the file and the element.
#[test]
fn broken_packs_are_errors_naming_file_and_element() {
    let core = package(CORE_PACKAGE);
    if !core.is_dir() {
        eprintln!("broken packs: skipped (core package not installed)");
        return;
    }
    let manifest = "name = \"t\"\ncanonical = \"urn:t\"\n";
    let sd = |diff: Value, base: &str| {
        serde_json::json!({"resourceType": "StructureDefinition", "url": "urn:t/StructureDefinition/p", "type": "Patient",
            "baseDefinition": base, "derivation": "constraint", "kind": "resource", "abstract": false,
            "differential": {"element": diff}})
    };
    let cases: Vec<(&str, String, Value, &str)> = vec![
        ("widened", manifest.into(), sd(serde_json::json!([{"id": "Patient.birthDate", "path": "Patient.birthDate", "max": "2"}]), "http://hl7.org/fhir/StructureDefinition/Patient"), "element Patient.birthDate: max 2 exceeds the base's max 1"),
        ("unknown element", manifest.into(), sd(serde_json::json!([{"id": "Patient.nmae", "path": "Patient.nmae", "min": 1}]), "http://hl7.org/fhir/StructureDefinition/Patient"), "element Patient.nmae: no element 'nmae'"),
        ("missing base", manifest.into(), sd(serde_json::json!([]), "urn:nowhere"), "base urn:nowhere not found"),
        ("unknown mandatory", format!("{manifest}[mandatory]\nPatient = [\"urn:t/StructureDefinition/q\"]\n"), sd(serde_json::json!([]), "http://hl7.org/fhir/StructureDefinition/Patient"), "mandatory profile urn:t/StructureDefinition/q is not defined"),
        ("wrong type", format!("{manifest}[mandatory]\nCondition = [\"urn:t/StructureDefinition/p\"]\n"), sd(serde_json::json!([]), "http://hl7.org/fhir/StructureDefinition/Patient"), "for Condition profiles Patient"),
    ];
    for (what, toml, sd, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pack.toml"), toml).unwrap();
        std::fs::write(dir.path().join("StructureDefinition-p.json"), sd.to_string()).unwrap();
        std::fs::write(dir.path().join("broken.json.txt"), "ignored").unwrap();
        let e = packs::load(&[dir.path().to_path_buf()], &[core.clone()]).err().unwrap_or_else(|| panic!("{what}: loaded")).to_string();
        assert!(e.contains(expected), "{what}: {e}");
        if !what.contains("mandatory") && what != "wrong type" {
            assert!(e.contains("StructureDefinition-p.json"), "{what}: names the file: {e}");
        }
    }
    // not JSON at all
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pack.toml"), manifest).unwrap();
    std::fs::write(dir.path().join("x.json"), "{").unwrap();
    let e = packs::load(&[dir.path().to_path_buf()], &[core]).err().unwrap().to_string();
    assert!(e.contains("x.json"), "{e}");
}
