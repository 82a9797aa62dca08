//! Unit tests of profile validation with tiny hand-made snapshots (R4
//! `profiling.html`: fixed/pattern, slicing discriminators, cardinality,
//! bindings, unknown profiles). They load the core package from the cache.

use super::Validator;
use crate::fhir::definitions::package_cache_dir;
use crate::fhir::{OperationOutcome, Severity};
use serde_json::{json, Value};
use std::sync::OnceLock;

fn base() -> &'static Validator {
    static V: OnceLock<Validator> = OnceLock::new();
    V.get_or_init(|| Validator::load(&package_cache_dir()).expect("core package installed (scripts/fhir-packages.sh)"))
}

const P: &str = "http://example.org/StructureDefinition/test-patient";

/// A Patient profile: identifier sliced by system (closed), slice `kvnr` 1..1
/// with a fixed system; gender fixed; maritalStatus pattern; name 1..*;
/// language bound (required) to a two-code ValueSet.
fn profile() -> Value {
    json!({"resourceType": "StructureDefinition", "url": P, "version": "1.0", "name": "TestPatient", "type": "Patient",
      "derivation": "constraint", "kind": "resource", "abstract": false,
      "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
      "snapshot": {"element": [
        {"id": "Patient", "path": "Patient", "min": 0, "max": "*"},
        {"id": "Patient.identifier", "path": "Patient.identifier", "min": 0, "max": "*", "base": {"path": "Patient.identifier", "min": 0, "max": "*"},
         "type": [{"code": "Identifier"}],
         "slicing": {"discriminator": [{"type": "value", "path": "system"}], "rules": "closed"}},
        {"id": "Patient.identifier:kvnr", "path": "Patient.identifier", "sliceName": "kvnr", "min": 1, "max": "1", "type": [{"code": "Identifier"}]},
        {"id": "Patient.identifier:kvnr.system", "path": "Patient.identifier.system", "min": 1, "max": "1", "type": [{"code": "uri"}],
         "fixedUri": "http://fhir.de/sid/gkv/kvid-10"},
        {"id": "Patient.identifier:kvnr.value", "path": "Patient.identifier.value", "min": 1, "max": "1", "type": [{"code": "string"}]},
        {"id": "Patient.identifier:mrn", "path": "Patient.identifier", "sliceName": "mrn", "min": 0, "max": "1", "type": [{"code": "Identifier"}]},
        {"id": "Patient.identifier:mrn.system", "path": "Patient.identifier.system", "min": 1, "max": "1", "type": [{"code": "uri"}],
         "patternUri": "urn:oid:1.2.3"},
        {"id": "Patient.name", "path": "Patient.name", "min": 1, "max": "*", "base": {"path": "Patient.name", "min": 0, "max": "*"}, "type": [{"code": "HumanName"}]},
        {"id": "Patient.gender", "path": "Patient.gender", "min": 0, "max": "1", "type": [{"code": "code"}], "fixedCode": "female"},
        {"id": "Patient.maritalStatus", "path": "Patient.maritalStatus", "min": 0, "max": "1", "type": [{"code": "CodeableConcept"}],
         "patternCodeableConcept": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}]}},
        {"id": "Patient.language", "path": "Patient.language", "min": 0, "max": "1", "type": [{"code": "code"}],
         "binding": {"strength": "required", "valueSet": "http://example.org/ValueSet/two-languages"}}
      ]}})
}

fn validator() -> Validator {
    let mut v = base().clone();
    v.add_definition(&json!({"resourceType": "ValueSet", "url": "http://example.org/ValueSet/two-languages",
        "compose": {"include": [{"system": "urn:ietf:bcp:47", "concept": [{"code": "de"}, {"code": "en"}]}]}}))
    .unwrap();
    assert_eq!(v.add_profile(&profile()).unwrap(), P);
    v
}

fn good() -> Value {
    json!({"resourceType": "Patient", "identifier": [{"system": "http://fhir.de/sid/gkv/kvid-10", "value": "A123456780"}],
        "name": [{"family": "Muster"}], "gender": "female", "language": "de",
        "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M", "display": "Married"}], "text": "verheiratet"}})
}

fn errors(oo: &OperationOutcome) -> Vec<String> {
    oo.issues.iter().filter(|i| i.severity <= Severity::Error).map(|i| format!("{}: {}", i.expression.join(","), i.diagnostics)).collect()
}

fn check(mutate: impl FnOnce(&mut Value)) -> Vec<String> {
    let mut r = good();
    mutate(&mut r);
    errors(&validator().validate_with_profiles(&r, &[P]))
}

#[test]
fn conforming_instance_passes_and_versioned_url_resolves() {
    let v = validator();
    assert_eq!(errors(&v.validate_with_profiles(&good(), &[P])), Vec::<String>::new());
    assert_eq!(errors(&v.validate_with_profiles(&good(), &[&format!("{P}|1.0")])), Vec::<String>::new());
}

#[test]
fn fixed_value() {
    let e = check(|r| r["gender"] = json!("male"));
    assert!(e.len() == 1 && e[0].contains("fixed to 'female'") && e[0].contains(P), "{e:?}");
}

#[test]
fn pattern_partial_match() {
    let e = check(|r| r["maritalStatus"] = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "S"}]}));
    assert!(e.len() == 1 && e[0].contains("pattern"), "{e:?}");
    // extra codings and text are fine
    let e = check(|r| r["maritalStatus"]["coding"].as_array_mut().unwrap().insert(0, json!({"system": "http://x", "code": "y"})));
    assert!(e.is_empty(), "{e:?}");
}

#[test]
fn tightened_cardinality() {
    let e = check(|r| {
        r.as_object_mut().unwrap().remove("name");
    });
    assert!(e.len() == 1 && e[0].contains("Patient.name: minimum required = 1"), "{e:?}");
}

#[test]
fn slices_by_value_discriminator() {
    // required slice missing
    let e = check(|r| r["identifier"] = json!([{"system": "urn:oid:1.2.3", "value": "x"}]));
    assert!(e.len() == 1 && e[0].contains("Slice 'Patient.identifier:kvnr'"), "{e:?}");
    // closed slicing: an identifier matching no slice
    let e = check(|r| r["identifier"].as_array_mut().unwrap().push(json!({"system": "http://other", "value": "1"})));
    assert!(e.len() == 1 && e[0].contains("does not match any known slice"), "{e:?}");
    // slice max and the slice's own children
    let e = check(|r| r["identifier"].as_array_mut().unwrap().push(json!({"system": "http://fhir.de/sid/gkv/kvid-10"})));
    assert!(e.iter().any(|x| x.contains("Patient.identifier:kvnr: max allowed = 1")), "{e:?}");
    assert!(e.iter().any(|x| x.contains("Patient.identifier.value: minimum required = 1")), "{e:?}");
}

#[test]
fn required_binding() {
    let e = check(|r| r["language"] = json!("fr"));
    assert!(e.len() == 1 && e[0].contains("two-languages"), "{e:?}");
}

#[test]
fn unknown_profiles() {
    let v = validator();
    let oo = v.validate_with_profiles(&good(), &["http://example.org/nope"]);
    assert!(errors(&oo).iter().any(|e| e.contains("http://example.org/nope")));
    // an unknown meta.profile is a warning, a known one is applied
    let mut r = good();
    r["meta"] = json!({"profile": ["http://example.org/unknown"]});
    let oo = v.validate(&r);
    assert!(errors(&oo).is_empty() && oo.issues.iter().any(|i| i.severity == Severity::Warning && i.diagnostics.contains("unknown")));
    r["meta"] = json!({"profile": [P]});
    r["gender"] = json!("male");
    assert_eq!(errors(&v.validate(&r)).len(), 1);
}

#[test]
fn profile_without_snapshot_is_refused() {
    let mut v = base().clone();
    let mut p = profile();
    p.as_object_mut().unwrap().remove("snapshot");
    assert!(matches!(v.add_profile(&p), Err(super::ValidateError::NoSnapshot(_))));
}

#[test]
fn core_required_binding_and_extensions() {
    let v = base();
    let e = errors(&v.validate(&json!({"resourceType": "Patient", "gender": "mle"})));
    assert!(e.len() == 1 && e[0].contains("administrative-gender"), "{e:?}");
    // a known core extension is checked against its definition (valueCode expected)
    let e = errors(&v.validate(&json!({"resourceType": "Patient", "extension": [
        {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace", "valueString": "Berlin"}]})));
    assert!(e.len() == 1 && e[0].contains("valueString"), "{e:?}");
}
