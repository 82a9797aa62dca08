//! Clinical de-duplication for the patient summary: two entries from
//! different institutions' records are "clinically identical" when they are
//! of the same resource type, carry the same code (code system + code of any
//! coding of the main code element) and their clinical times are the same or
//! overlap (each FHIR date/dateTime is the period its precision spans, R4
//! `datatypes.html#dateTime`; a Period is its start … end). Entries without a
//! code are never merged, different codes are never merged, and entries of
//! one record (one Patient) are never merged with each other — duplicates
//! inside one institution are that institution's business.

use crate::fhir::datetime;
use serde_json::Value;

/// The element holding the clinical code, per resource type.
fn code_element(rtype: &str) -> Option<&'static str> {
    Some(match rtype {
        "Condition" | "AllergyIntolerance" | "Observation" | "Procedure" | "DiagnosticReport" => "code",
        "Immunization" => "vaccineCode",
        "MedicationStatement" | "MedicationRequest" => "medicationCodeableConcept",
        _ => return None,
    })
}

/// (system, code) pairs of the main code element.
pub fn codes(rtype: &str, res: &Value) -> Vec<(String, String)> {
    let Some(el) = code_element(rtype) else { return vec![] };
    res.get(el)
        .and_then(|c| c.get("coding"))
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| Some((c.get("system")?.as_str()?.to_owned(), c.get("code")?.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The clinical time of an entry as a µs interval [lo, hi], if it has one.
pub fn interval(rtype: &str, res: &Value) -> Option<(i64, i64)> {
    let names: &[&str] = match rtype {
        "Condition" => &["onset", "recordedDate"],
        "AllergyIntolerance" => &["onset", "recordedDate"],
        "Observation" | "DiagnosticReport" => &["effective", "issued"],
        "Procedure" => &["performed"],
        "Immunization" => &["occurrence"],
        "MedicationStatement" => &["effective", "dateAsserted"],
        "MedicationRequest" => &["authoredOn"],
        _ => &[],
    };
    // `{name}DateTime`, `{name}Period` and `{name}` without building the keys
    let member = |n: &str, suffix: &str| {
        res.as_object()?.iter().find(|(k, _)| k.len() == n.len() + suffix.len() && k.starts_with(n) && k.ends_with(suffix)).map(|(_, v)| v)
    };
    for n in names {
        for (suffix, v) in [("DateTime", member(n, "DateTime")), ("Period", member(n, "Period")), ("", res.get(*n))] {
            let Some(v) = v else { continue };
            if suffix == "Period" {
                let lo = v.get("start").and_then(Value::as_str).and_then(datetime::parse).map(|d| d.lo);
                let hi = v.get("end").and_then(Value::as_str).and_then(datetime::parse).map(|d| d.hi);
                match (lo, hi) {
                    (Some(lo), Some(hi)) => return Some((lo, hi)),
                    (Some(lo), None) => return Some((lo, i64::MAX)),
                    (None, Some(hi)) => return Some((i64::MIN, hi)),
                    _ => continue,
                }
            }
            if let Some(d) = v.as_str().and_then(datetime::parse) {
                // a Condition lasts until its abatement
                let hi = if rtype == "Condition" {
                    res.get("abatementDateTime").and_then(Value::as_str).and_then(datetime::parse).map(|a| a.hi).unwrap_or(d.hi).max(d.hi)
                } else {
                    d.hi
                };
                return Some((d.lo, hi));
            }
        }
    }
    None
}

/// One summary entry with what de-duplication needs.
#[derive(Debug, Clone)]
pub struct Item {
    pub rtype: String,
    pub id: String,
    /// the Patient record it belongs to
    pub record: String,
    pub codes: Vec<(String, String)>,
    pub interval: Option<(i64, i64)>,
}

fn same(a: &Item, b: &Item) -> bool {
    if a.rtype != b.rtype || a.record == b.record || a.codes.is_empty() {
        return false;
    }
    if !a.codes.iter().any(|c| b.codes.contains(c)) {
        return false;
    }
    match (a.interval, b.interval) {
        (Some((alo, ahi)), Some((blo, bhi))) => alo <= bhi && blo <= ahi,
        (None, None) => true,
        _ => false,
    }
}

/// Group the items: each group's first member is kept, the others are its
/// duplicates (the order of `items` decides which is kept). Returns, per
/// kept item index, the indexes of its duplicates.
pub fn groups(items: &[Item]) -> Vec<(usize, Vec<usize>)> {
    let mut taken = vec![false; items.len()];
    let mut out = vec![];
    for i in 0..items.len() {
        if taken[i] {
            continue;
        }
        taken[i] = true;
        let mut dups = vec![];
        for j in i + 1..items.len() {
            // one entry per record in a group
            if !taken[j] && same(&items[i], &items[j]) && !dups.iter().any(|&d: &usize| items[d].record == items[j].record) {
                taken[j] = true;
                dups.push(j);
            }
        }
        out.push((i, dups));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(rtype: &str, id: &str, record: &str, res: Value) -> Item {
        Item { rtype: rtype.into(), id: id.into(), record: record.into(), codes: codes(rtype, &res), interval: interval(rtype, &res) }
    }

    fn cond(code: &str, onset: &str) -> Value {
        json!({"resourceType": "Condition", "code": {"coding": [{"system": "http://fhir.de/CodeSystem/bfarm/icd-10-gm", "code": code}]}, "onsetDateTime": onset})
    }

    #[test]
    fn same_code_overlapping_dates_from_two_records_merge() {
        let items = vec![
            item("Condition", "a", "P1", cond("I50.13", "2024-03-05")),
            item("Condition", "b", "P2", cond("I50.13", "2024-03-05T10:30:00+01:00")),
            item("Condition", "c", "P2", cond("I50.13", "2023-01-01")),
            item("Condition", "d", "P3", cond("E11.9", "2024-03-05")),
        ];
        let g = groups(&items);
        assert_eq!(g, vec![(0, vec![1]), (2, vec![]), (3, vec![])]);
    }

    #[test]
    fn never_within_one_record_never_different_codes_or_types() {
        let items = vec![
            item("Condition", "a", "P1", cond("I50.13", "2024-03-05")),
            item("Condition", "b", "P1", cond("I50.13", "2024-03-05")),
            item("Condition", "c", "P2", cond("I50.14", "2024-03-05")),
        ];
        assert!(groups(&items).iter().all(|(_, d)| d.is_empty()));
        // a dated and an undated entry are not known to be the same
        let items = vec![
            item("Condition", "a", "P1", cond("I50.13", "2024-03-05")),
            item("Condition", "b", "P2", json!({"code": {"coding": [{"system": "http://fhir.de/CodeSystem/bfarm/icd-10-gm", "code": "I50.13"}]}})),
        ];
        assert!(groups(&items).iter().all(|(_, d)| d.is_empty()));
    }

    #[test]
    fn condition_lasts_until_abatement_and_periods_overlap() {
        let mut long = cond("J45", "2020-01");
        long["abatementDateTime"] = json!("2024-12");
        let items = vec![item("Condition", "a", "P1", long), item("Condition", "b", "P2", cond("J45", "2023-06-01"))];
        assert_eq!(groups(&items)[0].1, vec![1]);
        let p = |s: &str, e: &str| json!({"code": {"coding": [{"system": "http://snomed.info/sct", "code": "80146002"}]}, "performedPeriod": {"start": s, "end": e}});
        let items = vec![item("Procedure", "a", "P1", p("2024-01-01T08:00:00Z", "2024-01-01T09:00:00Z")), item("Procedure", "b", "P2", p("2024-01-01T08:30:00Z", "2024-01-01T10:00:00Z"))];
        assert_eq!(groups(&items)[0].1, vec![1]);
    }
}
