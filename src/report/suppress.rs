//! Small-cell suppression with complementary suppression for summary
//! reports (statistical disclosure control; the threshold `k` is
//! `[report] min_cell`, default 5).
//!
//! A report group is a set of one-dimensional tables: for every population
//! (initial population, denominator, …) the group total and, per
//! stratifier, the strata, whose counts add up to the total (every item
//! lands in exactly one stratum, `unknown` included). The attacker knows
//! everything published, that the strata of a dimension add up to the
//! total, that populations nest, and that a suppressed count is at least 1.
//!
//! 1. **Primary**: every count `c` with `0 < c < k` is suppressed (group
//!    totals and strata). For proportion measures the numerator is also
//!    suppressed when its complement in the denominator (`denominator −
//!    exclusions − exceptions − numerator`) is between 1 and k−1.
//! 2. **Complementary**, per dimension (stratifier × population), repeated
//!    until nothing changes: when the total is published and exactly one
//!    stratum is suppressed (it would be total − published strata), or the
//!    suppressed strata sum to exactly their number (all would be 1), the
//!    smallest published non-zero stratum (ties: by label) is suppressed
//!    too; when the total is suppressed but every non-zero stratum is
//!    published (the total would be their sum), the smallest non-zero
//!    stratum is suppressed.
//! 3. **Scores**: a cell's measure score is suppressed when any of its
//!    counts is, or (continuous variables) when fewer than k observations
//!    make it.
//!
//! Zero counts are published. Not covered: differencing between reports of
//! overlapping periods or different measures, and two stratifiers that
//! partition the population identically under different labels.

use super::evaluate::{Cell, GroupTally};
use super::measure::{Group, PopCode, Scoring};
use std::collections::BTreeMap;

const NPOP: usize = 9;

/// Which counts and scores of a group are suppressed.
#[derive(Debug, Clone, Default)]
pub struct Mask {
    pub total: [bool; NPOP],
    pub total_score: bool,
    /// per selected stratifier (same order as `GroupTally::strata`): stratum → (counts, score)
    pub strata: Vec<BTreeMap<String, ([bool; NPOP], bool)>>,
}

fn primary(g: &Group, c: &Cell, k: u64) -> [bool; NPOP] {
    let mut m = [false; NPOP];
    for p in g.codes() {
        let n = c.count(p);
        m[p.index()] = n > 0 && n < k;
    }
    if g.scoring == Scoring::Proportion {
        let den = c.count(PopCode::Denominator);
        let rest = den
            .saturating_sub(c.count(PopCode::DenominatorExclusion))
            .saturating_sub(c.count(PopCode::DenominatorException))
            .saturating_sub(c.count(PopCode::Numerator));
        if rest > 0 && rest < k && c.count(PopCode::Numerator) > 0 {
            m[PopCode::Numerator.index()] = true;
        }
    }
    m
}

/// Suppress the counts of `t` (the tally of group `g`) for threshold `k`.
pub fn suppress(g: &Group, t: &GroupTally, k: u64) -> Mask {
    let mut mask = Mask { total: primary(g, &t.total, k), ..Default::default() };
    for (_, strata) in &t.strata {
        mask.strata.push(strata.iter().map(|(v, c)| (v.clone(), (primary(g, c, k), false))).collect());
    }
    let codes = g.codes();
    loop {
        let mut changed = false;
        for (d, (_, strata)) in t.strata.iter().enumerate() {
            for p in &codes {
                let i = p.index();
                let dim = &mut mask.strata[d];
                let suppressed: Vec<u64> = strata.iter().filter(|(v, _)| dim[*v].0[i]).map(|(_, c)| c.count(*p)).collect();
                let total_hidden = mask.total[i];
                let need = if total_hidden {
                    // the total would be the sum of the published strata
                    suppressed.is_empty() && strata.values().any(|c| c.count(*p) > 0)
                } else {
                    suppressed.len() == 1 || (!suppressed.is_empty() && suppressed.iter().sum::<u64>() == suppressed.len() as u64)
                };
                if !need {
                    continue;
                }
                let pick = strata
                    .iter()
                    .filter(|(v, c)| !dim[*v].0[i] && c.count(*p) > 0)
                    .min_by(|(va, ca), (vb, cb)| ca.count(*p).cmp(&cb.count(*p)).then(va.cmp(vb)))
                    .map(|(v, _)| v.clone());
                if let Some(v) = pick {
                    if let Some(e) = dim.get_mut(&v) {
                        e.0[i] = true;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    let cv = g.scoring == Scoring::ContinuousVariable;
    let score_hidden = |m: &[bool; NPOP], c: &Cell| m.iter().any(|x| *x) || (cv && (c.obs.len() as u64) < k);
    mask.total_score = score_hidden(&mask.total, &t.total);
    for (d, (_, strata)) in t.strata.iter().enumerate() {
        for (v, c) in strata {
            if let Some(e) = mask.strata[d].get_mut(v) {
                e.1 = score_hidden(&e.0, c);
            }
        }
    }
    mask
}
