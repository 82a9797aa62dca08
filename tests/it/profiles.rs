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
        let e = packs::load(&[dir.path().to_path_buf()], std::slice::from_ref(&core)).err().unwrap_or_else(|| panic!("{what}: loaded")).to_string();
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

/// The validator with both packs installed (shared by the fixture tests).
fn pack_validator() -> Option<&'static carebridge::validate::Validator> {
    static V: std::sync::OnceLock<Option<carebridge::validate::Validator>> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        let cache = package_cache_dir();
        if !cache.join(CORE_PACKAGE).is_dir() {
            return None;
        }
        let mut v = carebridge::validate::Validator::load(&cache).expect("core");
        let loaded = packs::load(&pack_dirs(), &[package(CORE_PACKAGE)]).expect("packs");
        packs::install(&mut v, &loaded).expect("install");
        Some(v)
    })
    .as_ref()
}

/// Every fixture under `fixtures/profiles/<pack>/{valid,invalid}`: a valid
/// resource has no error against core + its `meta.profile` + the packs'
/// mandatory profiles; an invalid one has exactly the errors its sidecar
/// `<name>.expect.json` lists (code, and a text the message contains).
#[test]
fn profile_fixtures() {
    let Some(v) = pack_validator() else {
        eprintln!("profile fixtures: skipped (core package not installed)");
        return;
    };
    let loaded = packs::load(&pack_dirs(), &[package(CORE_PACKAGE)]).unwrap();
    let hospital = packs::Member { id: None, kind: Some("hospital") };
    let root = crate::common::fixtures().join("profiles");
    let (mut valid, mut invalid, mut failures) = (0, 0, vec![]);
    for (pi, pack) in ["de-region", "cn-alliance"].into_iter().enumerate() {
        // each folder under its own pack's policy (one network per gateway)
        let policy = packs::Policy::new(&loaded[pi..=pi]);
        for kind in ["valid", "invalid"] {
            let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(pack).join(kind)).unwrap().flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files.iter().filter(|f| !f.to_string_lossy().ends_with(".expect.json")) {
                let res: Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
                let rt = res["resourceType"].as_str().unwrap();
                let mandatory = policy.mandatory(rt, hospital);
                let oo = v.validate_with_profiles(&res, &mandatory);
                let errors: Vec<(String, String, String)> = oo
                    .issues
                    .iter()
                    .filter(|i| i.severity <= carebridge::fhir::Severity::Error)
                    .map(|i| (i.code.as_str().to_owned(), i.expression.join(","), i.diagnostics.clone()))
                    .collect();
                let name = format!("{pack}/{kind}/{}", f.file_name().unwrap().to_string_lossy());
                if kind == "valid" {
                    valid += 1;
                    if !errors.is_empty() {
                        failures.push(format!("{name}: expected valid, got {errors:?}"));
                    }
                    continue;
                }
                invalid += 1;
                let exp: Value = serde_json::from_slice(&std::fs::read(f.with_extension("expect.json")).unwrap()).unwrap();
                let expected = exp["issues"].as_array().unwrap();
                let matches = |e: &Value, got: &(String, String, String)| {
                    e["code"].as_str() == Some(got.0.as_str())
                        && e["expression"].as_str().is_none_or(|x| x == got.1)
                        && got.2.contains(e["message"].as_str().unwrap_or(""))
                };
                let all_found = expected.iter().all(|e| errors.iter().any(|g| matches(e, g)));
                let no_other = errors.iter().all(|g| expected.iter().any(|e| matches(e, g)));
                if !(all_found && no_other) {
                    failures.push(format!("{name} ({}): expected {expected:?}, got {errors:?}", exp["rule"]));
                }
            }
        }
    }
    eprintln!("profile fixtures: {valid} valid, {invalid} invalid, {} failing", failures.len());
    for x in &failures {
        eprintln!("  {x}");
    }
    assert!(valid >= 16 && invalid >= 40, "fixtures found");
    assert!(failures.is_empty());
}

/// The write pipeline validates against the de-region pack's mandatory
/// profiles (no `meta.profile` needed); `$validate` takes a `profile`.
#[tokio::test]
async fn pipeline_enforces_mandatory_profiles() {
    use crate::common::{post_json, Backend, TestServer};
    let cache = package_cache_dir();
    if !cache.join(CORE_PACKAGE).is_dir() {
        eprintln!("pipeline profiles: skipped (core package not installed)");
        return;
    }
    let (v, policy) = carebridge::server::validator_with_packs(None, vec![repo().join("profiles/de-region")]).await.unwrap();
    let s = TestServer::start_validator(Backend::Sqlite, Default::default(), carebridge::services::ValidationMode::Enforce, false, v, policy).await;
    let fx = crate::common::fixtures().join("profiles/de-region");
    let mut good: Value = serde_json::from_slice(&std::fs::read(fx.join("valid/patient.json")).unwrap()).unwrap();
    good.as_object_mut().unwrap().remove("meta");
    let r = crate::common::put_json(&s, "Patient/de-pat-1", &good).await;
    assert_eq!(r.status, 201, "{}", r.diagnostics());
    // same patient, wrong KVNR check digit, no meta.profile: the mandatory profile rejects it
    let mut bad = good.clone();
    bad["identifier"][0]["value"] = "A123456781".into();
    let r = crate::common::put_json(&s, "Patient/de-pat-1", &bad).await;
    assert_eq!(r.status, 422, "{}", r.diagnostics());
    assert!(r.text.contains("de-kvnr-2"), "{}", r.text);
    // core-only types are untouched by the pack
    let r = post_json(&s, "Basic", &serde_json::json!({"resourceType": "Basic", "code": {"text": "x"}})).await;
    assert_eq!(r.status, 201, "{}", r.diagnostics());
    // $validate with an explicit profile (Encounter is mandatory only for hospital members)
    let enc: Value = serde_json::from_slice(&std::fs::read(fx.join("invalid/encounter-period-missing.json")).unwrap()).unwrap();
    let mut enc_plain = enc.clone();
    enc_plain.as_object_mut().unwrap().remove("meta");
    let r = post_json(&s, "Encounter/$validate", &enc_plain).await;
    assert_eq!(r.status, 200);
    assert!(!r.text.contains("Encounter.period"), "no profile asked: {}", r.text);
    let params = serde_json::json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": enc_plain},
        {"name": "profile", "valueCanonical": "https://carebridge.example/fhir/de-region/StructureDefinition/de-encounter"}]});
    let r = post_json(&s, "Encounter/$validate", &params).await;
    assert_eq!(r.status, 200);
    assert!(r.text.contains("Encounter.period: minimum required = 1"), "{}", r.text);
    let r = post_json(&s, "Encounter/$validate?profile=https://nowhere.example/sd", &enc_plain).await;
    assert!(r.text.contains("https://nowhere.example/sd"), "{}", r.text);
    s.stop().await;
}

/// The German variant of Synthea bundles conforms to de-region's mandatory
/// profiles; with broken KVNRs exactly the check-digit invariant fails.
#[test]
fn german_synthea_variant_conforms_and_broken_kvnr_is_rejected() {
    use carebridge::cli::de_variant::germanize_bundle;
    let Some(shared) = crate::common::shared_dir() else {
        eprintln!("german variant: skipped (../shared not found)");
        return;
    };
    let Some(v) = pack_validator() else {
        eprintln!("german variant: skipped (core package not installed)");
        return;
    };
    let loaded = packs::load(&pack_dirs()[..1], &[package(CORE_PACKAGE)]).unwrap();
    let policy = packs::Policy::new(&loaded);
    let mut files: Vec<PathBuf> = std::fs::read_dir(shared.join("samples/synthea")).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    let (mut checked, mut broken_hits) = (0, 0);
    for f in files.iter().filter(|f| f.extension().is_some_and(|x| x == "json")).take(5) {
        let raw: Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
        for broken in [false, true] {
            let mut b = raw.clone();
            germanize_bundle(&mut b, broken);
            for e in b["entry"].as_array().unwrap() {
                let r = &e["resource"];
                let rt = r["resourceType"].as_str().unwrap();
                let m = policy.mandatory(rt, packs::Member::default());
                if m.is_empty() {
                    continue;
                }
                let plain = v.validate(r);
                let with = v.validate_with_profiles(r, &m);
                // issues the profiles add (core issues of Synthea data are not this test's subject)
                let added: Vec<String> = with
                    .issues
                    .iter()
                    .filter(|i| i.severity <= carebridge::fhir::Severity::Error && !plain.issues.contains(i))
                    .map(|i| i.diagnostics.clone())
                    .collect();
                if broken && rt == "Patient" {
                    assert_eq!(added.len(), 1, "{}: {added:?}", f.display());
                    assert!(added[0].contains("de-kvnr-2"), "{added:?}");
                    broken_hits += 1;
                } else {
                    assert!(added.is_empty(), "{} {rt}: {added:?}", f.display());
                    checked += usize::from(!broken);
                }
            }
        }
    }
    eprintln!("german variant: {checked} resources conform to de-region, {broken_hits} broken KVNRs rejected");
    assert!(checked > 10 && broken_hits == 5);
}

/// `carebridge validate --pack … --profile …` (the binary), a broken pack as
/// a start-up error naming the file, and `fhir.packs` in carebridge.toml.
#[test]
fn cli_validate_with_packs_and_config() {
    let c: carebridge::config::FileConfig = toml::from_str("[fhir]\npacks = [\"profiles/de-region\", \"profiles/cn-alliance\"]\n").unwrap();
    assert_eq!(c.fhir.packs.unwrap(), ["profiles/de-region", "profiles/cn-alliance"]);
    if !package(CORE_PACKAGE).is_dir() {
        eprintln!("cli packs: skipped (core package not installed)");
        return;
    }
    let fx = crate::common::fixtures().join("profiles/de-region");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_carebridge"))
            .current_dir(repo())
            .args(args)
            .env_remove("CAREBRIDGE_PACKS")
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let valid = fx.join("valid/patient.json");
    let bad = fx.join("invalid/patient-kvnr-check-digit.json");
    let mut plain: Value = serde_json::from_slice(&std::fs::read(&bad).unwrap()).unwrap();
    plain.as_object_mut().unwrap().remove("meta");
    let tmp = tempfile::tempdir().unwrap();
    let plain_file = tmp.path().join("plain.json");
    std::fs::write(&plain_file, plain.to_string()).unwrap();
    // without the pack a KVNR is just an identifier
    let (ok, text) = run(&["validate", plain_file.to_str().unwrap()]);
    assert!(ok, "{text}");
    // with it, the mandatory profile applies; --profile adds one explicitly
    let (ok, text) = run(&["validate", "--pack", "profiles/de-region", valid.to_str().unwrap(), plain_file.to_str().unwrap()]);
    assert!(!ok && text.contains("de-kvnr-2") && text.contains("1 invalid"), "{text}");
    let (ok, text) = run(&["validate", "--profile", "https://carebridge.example/fhir/de-region/StructureDefinition/de-encounter", "--pack", "profiles/de-region", fx.join("invalid/encounter-period-missing.json").to_str().unwrap()]);
    assert!(!ok && text.contains("Encounter.period: minimum required = 1"), "{text}");
    // a broken pack stops the command with the file and element named
    let broken = tmp.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("pack.toml"), "name = \"b\"\ncanonical = \"urn:b\"\n").unwrap();
    std::fs::write(
        broken.join("StructureDefinition-b.json"),
        serde_json::json!({"resourceType": "StructureDefinition", "url": "urn:b/p", "type": "Patient", "derivation": "constraint",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
            "differential": {"element": [{"id": "Patient.gender", "path": "Patient.gender", "max": "*"}]}})
        .to_string(),
    )
    .unwrap();
    let (ok, text) = run(&["validate", "--pack", broken.to_str().unwrap(), valid.to_str().unwrap()]);
    assert!(!ok && text.contains("StructureDefinition-b.json") && text.contains("element Patient.gender: max * exceeds the base's max 1"), "{text}");
}
