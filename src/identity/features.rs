//! The matching features of a Patient (FHIR R4 `patient.html`): folded and
//! phonetic names of every `Patient.name` (so birth and married names both
//! count), birth date, gender, postcodes, phone numbers, trusted national
//! identifiers (checked) and a `replaced-by` link (A40 merge); plus the
//! blocking keys that select candidates without scanning every patient.

use super::normalize::{date_digits, fold_name, phone_key, phonetic, postcode_key};
use crate::services::mpi::MpiConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Stored as compact JSON in `mpi_patient.feat`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Features {
    /// folded family names
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub f: Vec<String>,
    /// folded first given names
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub g: Vec<String>,
    /// phonetic keys of `f`
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fp: Vec<String>,
    /// phonetic keys of `g`
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gp: Vec<String>,
    /// birth date digits (YYYY, YYYYMM or YYYYMMDD)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<String>,
    /// `m` or `f`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s: Option<String>,
    /// postcodes
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub z: Vec<String>,
    /// phone keys
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub t: Vec<String>,
    /// trusted identifiers (system, value) that pass their check
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub i: Vec<(String, String)>,
    /// `Patient.link` of type `replaced-by`: the surviving Patient id
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<String>,
}

fn push_unique(v: &mut Vec<String>, s: String) {
    if !s.is_empty() && !v.contains(&s) {
        v.push(s);
    }
}

impl Features {
    pub fn of_patient(p: &Value, cfg: &MpiConfig) -> Features {
        let mut f = Features::default();
        for n in p.get("name").and_then(Value::as_array).into_iter().flatten() {
            let mut family = n.get("family").and_then(Value::as_str).map(str::to_owned);
            let mut given = n.get("given").and_then(Value::as_array).and_then(|g| g.first()).and_then(Value::as_str).map(str::to_owned);
            if family.is_none() && given.is_none() {
                if let Some(text) = n.get("text").and_then(Value::as_str) {
                    let toks: Vec<&str> = text.split_whitespace().collect();
                    if toks.len() >= 2 {
                        given = toks.first().map(|s| (*s).to_owned());
                        family = toks.last().map(|s| (*s).to_owned());
                    }
                }
            }
            if let Some(fam) = family {
                let folded = fold_name(&fam);
                push_unique(&mut f.fp, phonetic(&folded));
                push_unique(&mut f.f, folded);
            }
            if let Some(g) = given {
                // first of several given names in one string ("Anna Maria")
                let first = g.split_whitespace().next().unwrap_or("");
                let folded = fold_name(first);
                push_unique(&mut f.gp, phonetic(&folded));
                push_unique(&mut f.g, folded);
            }
        }
        f.b = p.get("birthDate").and_then(Value::as_str).and_then(date_digits);
        f.s = match p.get("gender").and_then(Value::as_str) {
            Some("male") => Some("m".into()),
            Some("female") => Some("f".into()),
            _ => None,
        };
        for a in p.get("address").and_then(Value::as_array).into_iter().flatten() {
            if let Some(z) = a.get("postalCode").and_then(Value::as_str).and_then(postcode_key) {
                push_unique(&mut f.z, z);
            }
        }
        for t in p.get("telecom").and_then(Value::as_array).into_iter().flatten() {
            if t.get("system").and_then(Value::as_str).is_some_and(|s| s != "phone") {
                continue;
            }
            if let Some(k) = t.get("value").and_then(Value::as_str).and_then(phone_key) {
                push_unique(&mut f.t, k);
            }
        }
        for id in p.get("identifier").and_then(Value::as_array).into_iter().flatten() {
            let (Some(sys), Some(val)) = (id.get("system").and_then(Value::as_str), id.get("value").and_then(Value::as_str)) else {
                continue;
            };
            if let Some(ts) = cfg.trusted.iter().find(|t| t.system == sys) {
                let val = val.trim().to_owned();
                if super::ids::valid(ts.check, &val) && !f.i.iter().any(|(s, v)| s == sys && *v == val) {
                    f.i.push((sys.to_owned(), val));
                }
            }
        }
        for l in p.get("link").and_then(Value::as_array).into_iter().flatten() {
            if l.get("type").and_then(Value::as_str) == Some("replaced-by") {
                if let Some(r) = l.pointer("/other/reference").and_then(Value::as_str) {
                    if let Some(id) = r.strip_prefix("Patient/") {
                        f.r = Some(id.split('/').next().unwrap_or(id).to_owned());
                    }
                }
            }
        }
        f
    }

    /// Is there anything to match on?
    pub fn is_empty(&self) -> bool {
        self.f.is_empty() && self.g.is_empty() && self.b.is_none() && self.i.is_empty()
    }

    /// Blocking keys: trusted identifier; phonetic family + birth year;
    /// birth date; postcode + given initial; the unordered pair of phonetic
    /// family and given (survives swapped names and date errors); phonetic
    /// given + birth year (survives a married-name change).
    pub fn blocking_keys(&self) -> Vec<String> {
        let mut k = Vec::new();
        for (s, v) in &self.i {
            k.push(format!("i|{s}|{v}"));
        }
        let year = self.b.as_deref().map(|b| &b[..4]);
        if let Some(y) = year {
            for fp in &self.fp {
                k.push(format!("fy|{fp}|{y}"));
            }
            for gp in self.gp.iter().take(1) {
                k.push(format!("gy|{gp}|{y}"));
            }
        }
        if let Some(b) = self.b.as_deref().filter(|b| b.len() == 8) {
            k.push(format!("d|{b}"));
        }
        if let Some(g) = self.g.first() {
            let initial: String = g.chars().take(1).collect();
            for z in &self.z {
                k.push(format!("zg|{z}|{initial}"));
            }
        }
        if let (Some(fp), Some(gp)) = (self.fp.first(), self.gp.first()) {
            let (a, b) = if fp <= gp { (fp, gp) } else { (gp, fp) };
            k.push(format!("n|{a}|{b}"));
        }
        k.sort();
        k.dedup();
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn features_and_keys() {
        let p = json!({"resourceType": "Patient",
            "identifier": [{"system": "http://fhir.de/sid/gkv/kvid-10", "value": "X110411319"},
                           {"system": "http://fhir.de/sid/gkv/kvid-10", "value": "X110411318"}],
            "name": [{"family": "Müller", "given": ["Jürgen", "Karl"]}, {"use": "maiden", "family": "Schmidt", "given": ["Jürgen"]}],
            "gender": "male", "birthDate": "1956-03-14",
            "address": [{"postalCode": "20095"}], "telecom": [{"system": "phone", "value": "+49 40 1234567"}, {"system": "email", "value": "a@b.de"}],
            "link": [{"other": {"reference": "Patient/s1"}, "type": "replaced-by"}]});
        let f = Features::of_patient(&p, &MpiConfig::default());
        assert_eq!(f.f, vec!["mueller", "schmidt"]);
        assert_eq!(f.g, vec!["juergen"]);
        assert_eq!(f.i, vec![("http://fhir.de/sid/gkv/kvid-10".to_owned(), "X110411319".to_owned())], "bad check digit dropped");
        assert_eq!(f.t, vec!["01234567"]);
        assert_eq!(f.r.as_deref(), Some("s1"));
        let k = f.blocking_keys();
        assert!(k.contains(&"d|19560314".to_owned()));
        assert!(k.contains(&"fy|657|1956".to_owned()));
        assert!(k.contains(&"zg|20095|j".to_owned()));
        assert!(k.iter().any(|x| x.starts_with("i|http://fhir.de/sid/gkv/kvid-10|")));
        let back: Features = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
        assert_eq!(back, f);
    }
}
