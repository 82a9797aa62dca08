//! Master patient index policy: thresholds, Fellegi–Sunter m/u probabilities
//! per field and agreement level, and the trusted national identifier
//! systems (the `[mpi]` section of `carebridge.toml`). The matching itself is
//! in `identity/`; this is only the configuration every layer shares, like
//! the validation policy.
//!
//! Weights follow Fellegi & Sunter (1969), "A theory for record linkage":
//! level k of a field agrees with weight `log2(m_k/u_k)`; disagreement with
//! `log2((1-Σm)/(1-Σu))`; a value missing on either side contributes 0.
//!
//! ```toml
//! [mpi]
//! enabled = true
//! upper = 19.0        # auto-link at or above (log2 likelihood ratio)
//! lower = 11.0        # review queue (a Task) at or above, nothing below
//! [[mpi.trusted]]
//! system = "http://fhir.de/sid/gkv/kvid-10"
//! check = "kvnr"      # kvnr | gb11643 | none
//! [mpi.weights.family]
//! m = [0.90, 0.06]    # exact, similar (phonetic / Jaro-Winkler ≥ 0.90 / swapped)
//! u = [0.002, 0.01]
//! ```

use serde::Deserialize;

/// Check digit rule of a trusted identifier system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CheckRule {
    /// German KVNR (`http://fhir.de/sid/gkv/kvid-10`): letter + 8 digits + check digit (Luhn-like, weights 1-2)
    Kvnr,
    /// Chinese resident identity number (GB 11643-1999): 17 digits + ISO 7064 MOD 11-2 check character
    Gb11643,
    /// no check: any non-empty value
    #[default]
    None,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedSystem {
    pub system: String,
    #[serde(default)]
    pub check: CheckRule,
}

/// m and u probabilities of a field's agreement levels (index 0 = full agreement).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldWeights {
    pub m: Vec<f64>,
    pub u: Vec<f64>,
}

impl FieldWeights {
    fn new(m: &[f64], u: &[f64]) -> Self {
        FieldWeights { m: m.to_vec(), u: u.to_vec() }
    }
    /// Weight of agreement level `k` (log2 m/u).
    pub fn agree(&self, k: usize) -> f64 {
        match (self.m.get(k), self.u.get(k)) {
            (Some(m), Some(u)) if *m > 0.0 && *u > 0.0 => (m / u).log2(),
            _ => 0.0,
        }
    }
    /// Weight of disagreement: log2((1-Σm)/(1-Σu)).
    pub fn disagree(&self) -> f64 {
        let m: f64 = self.m.iter().sum();
        let u: f64 = self.u.iter().sum();
        ((1.0 - m).max(1e-6) / (1.0 - u).max(1e-6)).log2()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    /// exact, similar (phonetic key / Jaro-Winkler ≥ 0.90 / swapped with given)
    pub family: FieldWeights,
    /// exact, similar
    pub given: FieldWeights,
    /// exact, typo (day/month swapped or one digit off)
    pub birthdate: FieldWeights,
    /// exact
    pub gender: FieldWeights,
    /// exact, same first 3 characters
    pub postcode: FieldWeights,
    /// exact (last 8 digits)
    pub phone: FieldWeights,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            family: FieldWeights::new(&[0.88, 0.07], &[0.002, 0.01]),
            given: FieldWeights::new(&[0.90, 0.07], &[0.005, 0.02]),
            birthdate: FieldWeights::new(&[0.92, 0.06], &[0.0001, 0.002]),
            gender: FieldWeights::new(&[0.98], &[0.5]),
            postcode: FieldWeights::new(&[0.75, 0.08], &[0.01, 0.05]),
            phone: FieldWeights::new(&[0.60], &[0.0001]),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MpiConfig {
    /// link identities on every Patient write
    pub enabled: bool,
    /// auto-link at or above this total weight
    pub upper: f64,
    /// queue a review Task at or above this total weight (and below `upper`)
    pub lower: f64,
    /// trusted national identifier systems: equal → certain match, different → certainly not
    pub trusted: Vec<TrustedSystem>,
    /// candidates read per blocking key (bounds work on huge blocks)
    pub block_limit: usize,
    /// review Tasks queued at most per incoming record (the best candidates)
    pub max_reviews: usize,
    /// a group this large is not joined automatically (review instead): real
    /// people rarely have this many records; test data with one name often does
    pub max_group: usize,
    pub weights: Weights,
}

impl Default for MpiConfig {
    fn default() -> Self {
        MpiConfig {
            enabled: true,
            upper: 19.0,
            lower: 11.0,
            trusted: vec![
                TrustedSystem { system: "http://fhir.de/sid/gkv/kvid-10".into(), check: CheckRule::Kvnr },
                TrustedSystem { system: "urn:oid:2.16.156.10011.1.3".into(), check: CheckRule::Gb11643 },
            ],
            block_limit: 100,
            max_reviews: 3,
            max_group: 50,
            weights: Weights::default(),
        }
    }
}
