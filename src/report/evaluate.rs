//! Measure evaluation over the report facts (R4 `measure.html` §
//! "Measure population semantics").
//!
//! **Evaluation model.** The unit is the person (the master patient index
//! group: every institution's Patient record of one person). For each
//! person the FHIRPath environment is:
//!
//! | variable | value |
//! |---|---|
//! | `%patient` | the person's first Patient record (by id) |
//! | `%patients` | all of the person's Patient records (every member institution) |
//! | `%encounters` | all Encounters of those records |
//! | `%conditions` | all Conditions of those records |
//! | `%organizations` | every Organization (members; for provider types) |
//! | `%periodStart`, `%periodEnd` | the reporting period as DateTimes (a date `periodStart` means its first millisecond, a date `periodEnd` its last, UTC) |
//! | `%encounter` | Encounter basis: the Encounter being evaluated |
//!
//! The basis item (`$this`, the expression's input) is `%patient` for
//! Patient-based measures and `%encounter` for Encounter-based (episode)
//! measures (`cqfm-populationBasis` = `Encounter`).
//!
//! A criterion holds when its result is non-empty and not the single value
//! `false`. Populations nest: denominator ⊆ initial population (absent:
//! = initial population), exclusions and exceptions ⊆ denominator,
//! numerator ⊆ denominator minus exclusions (an exception only for items
//! not in the numerator); for continuous variables the observation is taken
//! for measure-population items not excluded and must be a number (a
//! Quantity's value counts). A stratifier's value is the first item of its
//! result as text (a Coding's or CodeableConcept's code, a Reference's
//! reference), `unknown` when empty, so a stratifier's strata always add up
//! to the group's population.

use super::access::{self, RowRef};
use super::facts::{Fact, Person, Snapshot};
use super::measure::{Basis, CompiledMeasure, Group, PopCode, Scoring};
use super::ReportError;
use crate::auth::Caller;
use crate::fhirpath::{self, EvalContext, Expression, ModelInfo, Value};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::sync::Arc;

const NPOP: usize = 9;

#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// FHIR date or dateTime
    pub period_start: String,
    pub period_end: String,
    /// restrict to the person of this Patient id
    pub subject: Option<String>,
    /// collect subject references per population (subject-list / individual reports)
    pub want_subjects: bool,
    /// only these stratifiers (by name); `None`: all of the measure's
    pub stratify: Option<Vec<String>>,
}

/// Counts, observations and (optionally) subjects of one cell.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub counts: [u64; NPOP],
    pub obs: Vec<f64>,
    pub subjects: Vec<Vec<String>>,
}

impl Cell {
    pub fn count(&self, p: PopCode) -> u64 {
        self.counts[p.index()]
    }
    fn add(&mut self, m: &Membership, subject: Option<&str>) {
        for i in 0..NPOP {
            if m.pops[i] {
                self.counts[i] += 1;
                if let Some(s) = subject {
                    if self.subjects.len() < NPOP {
                        self.subjects.resize(NPOP, vec![]);
                    }
                    self.subjects[i].push(s.to_owned());
                }
            }
        }
        if let Some(o) = m.obs {
            self.obs.push(o);
        }
    }
    fn merge(&mut self, o: Cell) {
        for i in 0..NPOP {
            self.counts[i] += o.counts[i];
        }
        self.obs.extend(o.obs);
        if !o.subjects.is_empty() {
            if self.subjects.len() < NPOP {
                self.subjects.resize(NPOP, vec![]);
            }
            for (i, s) in o.subjects.into_iter().enumerate() {
                self.subjects[i].extend(s);
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct GroupTally {
    pub total: Cell,
    /// (stratifier index in the group, strata by value)
    pub strata: Vec<(usize, BTreeMap<String, Cell>)>,
}

#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub groups: Vec<GroupTally>,
    pub persons: u64,
    pub items: u64,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.persons += o.persons;
        self.items += o.items;
        for (g, og) in self.groups.iter_mut().zip(o.groups) {
            g.total.merge(og.total);
            for ((_, s), (_, os)) in g.strata.iter_mut().zip(og.strata) {
                for (k, c) in os {
                    s.entry(k).or_default().merge(c);
                }
            }
        }
    }
}

struct Membership {
    pops: [bool; NPOP],
    obs: Option<f64>,
}

/// Turn a `periodStart`/`periodEnd` parameter into a full-precision DateTime
/// (date → first/last millisecond of the day, UTC).
pub fn period_bound(s: &str, end: bool) -> Result<fhirpath::DateTimeValue, ReportError> {
    let bad = || ReportError::Invalid(format!("'{s}' is not a FHIR date or dateTime"));
    crate::fhir::datetime::parse(s).ok_or_else(bad)?;
    let full = if s.len() == 10 {
        format!("{s}T{}Z", if end { "23:59:59.999" } else { "00:00:00.000" })
    } else if s.len() == 7 || s.len() == 4 {
        // month/year: widen through the range parser
        let r = crate::fhir::datetime::parse(s).ok_or_else(bad)?;
        let us = if end { r.hi } else { r.lo };
        let t = jiff::Timestamp::from_microsecond(us).map_err(|_| bad())?;
        t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    } else {
        s.to_owned()
    };
    fhirpath::parse_datetime(&full).ok_or_else(bad)
}

/// Evaluate `m` over the snapshot for `caller`. CPU-bound: run it on a blocking thread.
pub fn evaluate(
    m: &CompiledMeasure,
    snap: &Snapshot,
    model: &ModelInfo,
    caller: &Caller,
    req: &EvalRequest,
    progress: Option<&(dyn Fn(u64) + Sync)>,
) -> Result<Tally, ReportError> {
    let start = period_bound(&req.period_start, false)?;
    let end = period_bound(&req.period_end, true)?;
    if fhirpath_cmp(&start, &end) == Some(std::cmp::Ordering::Greater) {
        return Err(ReportError::Invalid("periodStart is after periodEnd".into()));
    }
    // which stratifiers per group
    let selected: Vec<Vec<usize>> = m
        .groups
        .iter()
        .map(|g| {
            (0..g.stratifiers.len())
                .filter(|i| req.stratify.as_ref().is_none_or(|names| names.iter().any(|n| *n == g.stratifiers[*i].name)))
                .collect()
        })
        .collect();
    if let Some(names) = &req.stratify {
        for n in names {
            if !m.groups.iter().any(|g| g.stratifiers.iter().any(|s| s.name == *n)) {
                let known: Vec<&str> = m.groups.iter().flat_map(|g| g.stratifiers.iter().map(|s| s.name.as_str())).collect();
                return Err(ReportError::Invalid(format!("stratifier '{n}' is not defined by this measure (known: {})", known.join(", "))));
            }
        }
    }
    let orgs: Vec<Json> = if m.uses_organizations {
        snap.organizations
            .iter()
            .filter(|f| visible(caller, f))
            .filter_map(|f| serde_json::from_slice(&f.body).ok())
            .collect()
    } else {
        vec![]
    };
    let persons: Vec<&Person> = match &req.subject {
        Some(pid) => snap.persons.iter().filter(|p| p.patients.iter().any(|f| f.id == *pid)).collect(),
        None => snap.persons.iter().collect(),
    };
    let empty = || Tally {
        groups: selected
            .iter()
            .map(|sel| GroupTally { total: Cell::default(), strata: sel.iter().map(|i| (*i, BTreeMap::new())).collect() })
            .collect(),
        persons: 0,
        items: 0,
    };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 8);
    let chunk = persons.len().div_ceil(threads).max(1);
    let done = std::sync::atomic::AtomicU64::new(0);
    let results: Vec<Result<Tally, ReportError>> = std::thread::scope(|s| {
        let handles: Vec<_> = persons
            .chunks(chunk)
            .map(|part| {
                let (orgs, selected, done) = (&orgs, &selected, &done);
                s.spawn(move || {
                    let mut t = empty();
                    for (i, p) in part.iter().enumerate() {
                        eval_person(m, p, model, caller, req, &start, &end, orgs, selected, &mut t)?;
                        if i % 1000 == 999 {
                            let n = done.fetch_add(1000, std::sync::atomic::Ordering::Relaxed) + 1000;
                            if let Some(pr) = progress {
                                pr(n);
                            }
                        }
                    }
                    Ok(t)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(ReportError::Unprocessable("measure evaluation failed".into())))).collect()
    });
    let mut total = empty();
    for r in results {
        total.merge(r?);
    }
    if let Some(pr) = progress {
        pr(persons.len() as u64);
    }
    Ok(total)
}

fn fhirpath_cmp(a: &fhirpath::DateTimeValue, b: &fhirpath::DateTimeValue) -> Option<std::cmp::Ordering> {
    (a.year, a.month, a.day, a.hour, a.minute, a.second, a.millis).partial_cmp(&(b.year, b.month, b.day, b.hour, b.minute, b.second, b.millis))
}

fn visible(caller: &Caller, f: &Fact) -> bool {
    access::visible(caller, RowRef { rtype: f.rtype, id: &f.id, patient: f.patient.as_deref(), body: &f.body })
}

fn parse_visible(caller: &Caller, facts: &[Arc<Fact>]) -> Vec<(Json, String)> {
    facts
        .iter()
        .filter(|f| visible(caller, f))
        .filter_map(|f| serde_json::from_slice(&f.body).ok().map(|j| (j, f.id.clone())))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn eval_person(
    m: &CompiledMeasure,
    p: &Person,
    model: &ModelInfo,
    caller: &Caller,
    req: &EvalRequest,
    start: &fhirpath::DateTimeValue,
    end: &fhirpath::DateTimeValue,
    orgs: &[Json],
    selected: &[Vec<usize>],
    t: &mut Tally,
) -> Result<(), ReportError> {
    let patients = parse_visible(caller, &p.patients);
    let Some((first, first_id)) = patients.first() else { return Ok(()) };
    let encounters = parse_visible(caller, &p.encounters);
    let conditions = if m.uses_conditions { parse_visible(caller, &p.conditions) } else { vec![] };
    let node = |j| fhirpath::resource_value(model, j);
    let mut ctx = EvalContext::new(model, first);
    ctx.variables.insert("patient".into(), vec![node(first)]);
    ctx.variables.insert("patients".into(), patients.iter().map(|(j, _)| node(j)).collect());
    ctx.variables.insert("encounters".into(), encounters.iter().map(|(j, _)| node(j)).collect());
    ctx.variables.insert("conditions".into(), conditions.iter().map(|(j, _)| node(j)).collect());
    ctx.variables.insert("organizations".into(), orgs.iter().map(node).collect());
    ctx.variables.insert("periodStart".into(), vec![Value::DateTime(*start)]);
    ctx.variables.insert("periodEnd".into(), vec![Value::DateTime(*end)]);
    t.persons += 1;
    match m.basis {
        Basis::Patient => {
            let subject = format!("Patient/{first_id}");
            eval_item(m, first, &ctx, req, selected, &subject, t)?;
        }
        Basis::Encounter => {
            for (e, id) in &encounters {
                ctx.variables.insert("encounter".into(), vec![node(e)]);
                ctx.resource = e;
                let subject = format!("Encounter/{id}");
                eval_item(m, e, &ctx, req, selected, &subject, t)?;
            }
        }
    }
    Ok(())
}

fn holds<'a>(e: &Expression, item: &'a Json, ctx: &EvalContext<'a>) -> Result<bool, ReportError> {
    let r = e.evaluate(item, ctx).map_err(|err| ReportError::Unprocessable(format!("criteria '{}': {err}", e.source())))?;
    Ok(match r.as_slice() {
        [] => false,
        [v] => v.to_system().as_bool() != Some(false),
        _ => true,
    })
}

fn eval_item<'a>(
    m: &CompiledMeasure,
    item: &'a Json,
    ctx: &EvalContext<'a>,
    req: &EvalRequest,
    selected: &[Vec<usize>],
    subject: &str,
    t: &mut Tally,
) -> Result<(), ReportError> {
    t.items += 1;
    for (gi, g) in m.groups.iter().enumerate() {
        let Some(mem) = membership(g, item, ctx)? else { continue };
        let subj = req.want_subjects.then_some(subject);
        let gt = &mut t.groups[gi];
        gt.total.add(&mem, subj);
        for (k, si) in selected[gi].iter().enumerate() {
            let v = stratum_value(&g.stratifiers[*si].expr, item, ctx)?;
            gt.strata[k].1.entry(v).or_default().add(&mem, subj);
        }
    }
    Ok(())
}

fn membership<'a>(g: &Group, item: &'a Json, ctx: &EvalContext<'a>) -> Result<Option<Membership>, ReportError> {
    let mut pops = [false; NPOP];
    let crit = |c: PopCode| -> Result<Option<bool>, ReportError> {
        match g.population(c) {
            Some(p) => holds(&p.expr, item, ctx).map(Some),
            None => Ok(None),
        }
    };
    if !crit(PopCode::InitialPopulation)?.unwrap_or(false) {
        return Ok(None);
    }
    pops[PopCode::InitialPopulation.index()] = true;
    let mut obs = None;
    match g.scoring {
        Scoring::Cohort => {}
        Scoring::Proportion | Scoring::Ratio => {
            let den = crit(PopCode::Denominator)?.unwrap_or(true);
            pops[PopCode::Denominator.index()] = den;
            let excl = den && crit(PopCode::DenominatorExclusion)?.unwrap_or(false);
            pops[PopCode::DenominatorExclusion.index()] = excl;
            let num_candidate = if g.scoring == Scoring::Ratio { true } else { den && !excl };
            let mut num = num_candidate && crit(PopCode::Numerator)?.unwrap_or(false);
            if num && crit(PopCode::NumeratorExclusion)?.unwrap_or(false) {
                pops[PopCode::NumeratorExclusion.index()] = true;
                num = false;
            }
            pops[PopCode::Numerator.index()] = num;
            if den && !excl && !num && g.population(PopCode::DenominatorException).is_some() {
                pops[PopCode::DenominatorException.index()] = crit(PopCode::DenominatorException)?.unwrap_or(false);
            }
        }
        Scoring::ContinuousVariable => {
            let mp = crit(PopCode::MeasurePopulation)?.unwrap_or(true);
            pops[PopCode::MeasurePopulation.index()] = mp;
            let mx = mp && crit(PopCode::MeasurePopulationExclusion)?.unwrap_or(false);
            pops[PopCode::MeasurePopulationExclusion.index()] = mx;
            if mp && !mx {
                if let Some(p) = g.population(PopCode::MeasureObservation) {
                    let r = p.expr.evaluate(item, ctx).map_err(|e| ReportError::Unprocessable(format!("observation '{}': {e}", p.expr.source())))?;
                    obs = r.first().and_then(number);
                    pops[PopCode::MeasureObservation.index()] = obs.is_some();
                }
            }
        }
    }
    Ok(Some(Membership { pops, obs }))
}

fn number(v: &Value<'_>) -> Option<f64> {
    match v.to_system() {
        Value::Integer(i) => Some(i as f64),
        Value::Decimal(d) => d.to_string().parse().ok(),
        Value::Quantity(q) => q.value.to_string().parse().ok(),
        _ => None,
    }
}

fn stratum_value<'a>(e: &Expression, item: &'a Json, ctx: &EvalContext<'a>) -> Result<String, ReportError> {
    let r = e.evaluate(item, ctx).map_err(|err| ReportError::Unprocessable(format!("stratifier '{}': {err}", e.source())))?;
    let Some(v) = r.first() else { return Ok("unknown".into()) };
    if let Value::Node(n) = v {
        if let Some(Json::Object(o)) = n.json() {
            let s = o
                .get("code")
                .or_else(|| o.get("coding").and_then(|c| c.get(0)).and_then(|c| c.get("code")))
                .or_else(|| o.get("reference"))
                .or_else(|| o.get("text"))
                .and_then(Json::as_str);
            return Ok(s.unwrap_or("unknown").to_owned());
        }
    }
    Ok(match v.to_system() {
        Value::String(s) => s.into_owned(),
        Value::Boolean(b) => b.to_string(),
        Value::Integer(i) => i.to_string(),
        Value::Decimal(d) => d.to_string(),
        Value::Date(d) => d.to_date_string(),
        Value::DateTime(d) => d.to_datetime_string(),
        other => other.to_json().to_string(),
    })
}
