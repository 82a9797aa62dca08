//! Pairwise comparison of two feature sets: deterministic on trusted national
//! identifiers, otherwise a Fellegi–Sunter total weight (sum over fields of
//! the agreement level's log2(m/u), or the disagreement weight), with the
//! per-field reasons kept so that every decision can be explained.
//!
//! Grades follow the R4 `match-grade` extension
//! (`http://hl7.org/fhir/StructureDefinition/match-grade`, used by
//! `Patient/$match`): `certain` (same trusted identifier), `probable`
//! (weight ≥ upper), `possible` (≥ lower), `certainly-not` (different trusted
//! identifiers of one system).

use super::features::Features;
use super::normalize::{date_typo, jaro_winkler};
use crate::services::mpi::{FieldWeights, MpiConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grade {
    CertainlyNot,
    None,
    Possible,
    Probable,
    Certain,
}

impl Grade {
    pub fn code(self) -> &'static str {
        match self {
            Grade::Certain => "certain",
            Grade::Probable => "probable",
            Grade::Possible => "possible",
            Grade::CertainlyNot | Grade::None => "certainly-not",
        }
    }
}

/// One field's contribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Reason {
    pub field: &'static str,
    pub level: &'static str,
    pub weight: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub weight: f64,
    pub grade: Grade,
    pub reasons: Vec<Reason>,
}

impl Comparison {
    /// `family=exact(+8.78) given=similar(+1.81) …`
    pub fn explain(&self) -> String {
        self.reasons.iter().map(|r| format!("{}={}({:+.2})", r.field, r.level, r.weight)).collect::<Vec<_>>().join(" ")
    }
    /// A score in 0..1 for `Bundle.entry.search.score`: 1 for certain, else
    /// the logistic of the weight centred between the thresholds.
    pub fn score01(&self, cfg: &MpiConfig) -> f64 {
        match self.grade {
            Grade::Certain => 1.0,
            Grade::CertainlyNot => 0.0,
            _ => {
                let mid = (cfg.upper + cfg.lower) / 2.0;
                let s = 1.0 / (1.0 + (-(self.weight - mid) / 2.0).exp2());
                (s * 1000.0).round() / 1000.0
            }
        }
    }
}

/// Agreement level of two name lists: 0 exact, 1 similar, None disagree.
fn name_level(a: &[String], ap: &[String], b: &[String], bp: &[String]) -> Option<usize> {
    if a.iter().any(|x| b.contains(x)) {
        return Some(0);
    }
    if ap.iter().any(|x| !x.is_empty() && bp.contains(x)) {
        return Some(1);
    }
    let best = a.iter().flat_map(|x| b.iter().map(move |y| jaro_winkler(x, y))).fold(0.0, f64::max);
    (best >= 0.90).then_some(1)
}

fn add(reasons: &mut Vec<Reason>, field: &'static str, w: &FieldWeights, level: Option<usize>, names: &[&'static str]) -> f64 {
    let (lvl, weight) = match level {
        Some(k) => (names.get(k).copied().unwrap_or("partial"), w.agree(k)),
        None => ("disagree", w.disagree()),
    };
    reasons.push(Reason { field, level: lvl, weight });
    weight
}

pub fn compare(a: &Features, b: &Features, cfg: &MpiConfig) -> Comparison {
    let w = &cfg.weights;
    let mut reasons = Vec::new();
    // trusted identifiers: deterministic
    let mut same_id = false;
    let mut conflict = false;
    for (s, v) in &a.i {
        for (s2, v2) in &b.i {
            if s == s2 {
                if v == v2 {
                    same_id = true;
                } else {
                    conflict = true;
                }
            }
        }
    }
    let mut total = 0.0;
    // names (with the swapped family/given check)
    let has_names = !a.f.is_empty() && !b.f.is_empty() && !a.g.is_empty() && !b.g.is_empty();
    let fam = name_level(&a.f, &a.fp, &b.f, &b.fp);
    let giv = name_level(&a.g, &a.gp, &b.g, &b.gp);
    if has_names && fam.is_none() && giv.is_none() {
        let cross_f = name_level(&a.f, &a.fp, &b.g, &b.gp);
        let cross_g = name_level(&a.g, &a.gp, &b.f, &b.fp);
        if cross_f.is_some() && cross_g.is_some() {
            total += add(&mut reasons, "family", &w.family, Some(1), &["exact", "swapped"]);
            total += add(&mut reasons, "given", &w.given, Some(1), &["exact", "swapped"]);
        } else {
            total += add(&mut reasons, "family", &w.family, None, &[]);
            total += add(&mut reasons, "given", &w.given, None, &[]);
        }
    } else {
        if !a.f.is_empty() && !b.f.is_empty() {
            total += add(&mut reasons, "family", &w.family, fam, &["exact", "similar"]);
        }
        if !a.g.is_empty() && !b.g.is_empty() {
            total += add(&mut reasons, "given", &w.given, giv, &["exact", "similar"]);
        }
    }
    if let (Some(x), Some(y)) = (&a.b, &b.b) {
        let level = if x == y {
            if x.len() == 8 {
                Some(0)
            } else {
                Some(1)
            }
        } else if date_typo(x, y) {
            Some(1)
        } else {
            None
        };
        total += add(&mut reasons, "birthdate", &w.birthdate, level, &["exact", "typo"]);
    }
    if let (Some(x), Some(y)) = (&a.s, &b.s) {
        total += add(&mut reasons, "gender", &w.gender, (x == y).then_some(0), &["exact"]);
    }
    if !a.z.is_empty() && !b.z.is_empty() {
        let level = if a.z.iter().any(|x| b.z.contains(x)) {
            Some(0)
        } else if a.z.iter().any(|x| b.z.iter().any(|y| x.len() >= 3 && y.len() >= 3 && x[..3] == y[..3])) {
            Some(1)
        } else {
            None
        };
        total += add(&mut reasons, "postcode", &w.postcode, level, &["exact", "region"]);
    }
    if !a.t.is_empty() && !b.t.is_empty() {
        total += add(&mut reasons, "phone", &w.phone, a.t.iter().any(|x| b.t.contains(x)).then_some(0), &["exact"]);
    }
    let grade = if same_id && !conflict {
        reasons.insert(0, Reason { field: "identifier", level: "same-trusted", weight: 0.0 });
        Grade::Certain
    } else if conflict {
        reasons.insert(0, Reason { field: "identifier", level: "different-trusted", weight: 0.0 });
        Grade::CertainlyNot
    } else if total >= cfg.upper {
        Grade::Probable
    } else if total >= cfg.lower {
        Grade::Possible
    } else {
        Grade::None
    };
    Comparison { weight: (total * 100.0).round() / 100.0, grade, reasons }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn feat(p: Value) -> Features {
        Features::of_patient(&p, &MpiConfig::default())
    }

    fn base() -> Value {
        json!({"resourceType": "Patient", "name": [{"family": "Müller", "given": ["Jürgen"]}], "gender": "male",
               "birthDate": "1956-03-14", "address": [{"postalCode": "20095"}], "telecom": [{"system": "phone", "value": "040 1234567"}]})
    }

    fn with(f: impl FnOnce(&mut Value)) -> Value {
        let mut p = base();
        f(&mut p);
        p
    }

    #[test]
    fn each_perturbation_still_links_and_strangers_do_not() {
        let cfg = MpiConfig::default();
        let a = feat(base());
        let cases: Vec<(&str, Value)> = vec![
            ("identical", base()),
            ("typo in family", with(|p| p["name"][0]["family"] = json!("Muller"))),
            ("typo in given", with(|p| p["name"][0]["given"][0] = json!("Jurgen"))),
            ("swapped names", with(|p| p["name"][0] = json!({"family": "Jürgen", "given": ["Müller"]}))),
            ("married name", with(|p| p["name"][0]["family"] = json!("Schneider"))),
            ("one digit off", with(|p| p["birthDate"] = json!("1956-03-15"))),
            ("no phone, no postcode", with(|p| {
                p.as_object_mut().unwrap().remove("telecom");
                p.as_object_mut().unwrap().remove("address");
            })),
        ];
        for (what, p) in cases {
            let c = compare(&a, &feat(p), &cfg);
            assert!(c.grade >= Grade::Probable, "{what}: {} {}", c.weight, c.explain());
        }
        let dm = compare(&feat(with(|p| p["birthDate"] = json!("1956-03-04"))), &feat(with(|p| p["birthDate"] = json!("1956-04-03"))), &cfg);
        assert!(dm.reasons.iter().any(|r| r.field == "birthdate" && r.level == "typo"), "{}", dm.explain());
        let stranger = feat(json!({"resourceType": "Patient", "name": [{"family": "Weber", "given": ["Anna"]}], "gender": "female",
                                   "birthDate": "1980-07-01", "address": [{"postalCode": "10115"}]}));
        let c = compare(&a, &stranger, &cfg);
        assert_eq!(c.grade, Grade::None, "{}", c.explain());
        assert!(c.weight < 0.0);
    }

    #[test]
    fn trusted_identifiers_are_deterministic() {
        let cfg = MpiConfig::default();
        let kv = |v: &str| json!([{"system": "http://fhir.de/sid/gkv/kvid-10", "value": v}]);
        let a = feat(with(|p| p["identifier"] = kv("X110411319")));
        let b = feat(json!({"resourceType": "Patient", "identifier": kv("X110411319"), "name": [{"family": "Meier", "given": ["Hans"]}]}));
        let c = compare(&a, &b, &cfg);
        assert_eq!(c.grade, Grade::Certain, "{}", c.explain());
        // same demographics, different valid KVNR: certainly not
        let d = feat(with(|p| p["identifier"] = kv("A000500015")));
        assert_eq!(compare(&a, &d, &cfg).grade, Grade::CertainlyNot);
        // an invalid check digit is not trusted: falls back to demographics
        let e = feat(with(|p| p["identifier"] = kv("X110411318")));
        assert_eq!(compare(&a, &e, &cfg).grade, Grade::Probable);
    }
}
