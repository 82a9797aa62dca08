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

use super::access::{RowBody, RowFilter, RowRef};
use super::facts::{Fact, Person, Snapshot};
use super::measure::{Basis, CompiledMeasure, Group, PopCode, Scoring};
use super::ReportError;
use crate::fhirpath::{self, EvalContext, Expression, ModelInfo, Value};
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};
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

/// Evaluate `m` over the snapshot, counting only the rows `filter` lets
/// through (`RowFilter::for_report`). CPU-bound: run it on a blocking thread.
pub fn evaluate(
    m: &CompiledMeasure,
    snap: &Snapshot,
    model: &ModelInfo,
    filter: &RowFilter,
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
    let orgs: Vec<&Json> = if m.uses_organizations {
        snap.organizations.iter().filter(|f| visible(filter, f)).map(|f| &f.json).collect()
    } else {
        vec![]
    };
    let persons: Vec<&Person> = match &req.subject {
        Some(pid) => snap.persons.iter().filter(|p| p.patients.iter().any(|f| f.id == *pid)).collect(),
        None => snap.persons.iter().collect(),
    };
    let plan = Plan::new(m, &selected);
    let now = fhirpath::now_utc();
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
                let (orgs, plan, done) = (&orgs, &plan, &done);
                s.spawn(move || {
                    let mut t = empty();
                    let mut env = PersonEnv::new(model, orgs, &start, &end, now, plan);
                    for (i, p) in part.iter().enumerate() {
                        env.eval_person(m, p, filter, req, &mut t)?;
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

/// `%` variables bound to the evaluated item (Encounter basis).
const ITEM_VARS: &[&str] = &["encounter", "resource", "context", "rootResource"];

fn fhirpath_cmp(a: &fhirpath::DateTimeValue, b: &fhirpath::DateTimeValue) -> Option<std::cmp::Ordering> {
    (a.year, a.month, a.day, a.hour, a.minute, a.second, a.millis).partial_cmp(&(b.year, b.month, b.day, b.hour, b.minute, b.second, b.millis))
}

fn visible(filter: &RowFilter, f: &Fact) -> bool {
    filter.visible(RowRef { rtype: f.rtype, id: &f.id, patient: f.patient.as_deref(), body: RowBody::Json(&f.json) })
}

static NO_RESOURCE: Json = Json::Null;

/// The measure's distinct expressions. Groups often repeat the same criteria
/// and stratifiers (e.g. one group per scoring over the same population);
/// each distinct text is evaluated once per item, and a stratifier that
/// reads only person-level variables (`%patient` …) once per person.
struct Plan {
    /// per group, per population code: the distinct criterion
    crit: Vec<[Option<usize>; NPOP]>,
    n_crit: usize,
    /// per group, per selected stratifier: the distinct stratifier
    strat: Vec<Vec<usize>>,
    /// per distinct stratifier: its value is the same for all of a person's items
    strat_per_person: Vec<bool>,
    /// per group: the selected stratifiers (indexes into the group's)
    selected: Vec<Vec<usize>>,
}

impl Plan {
    fn new(m: &CompiledMeasure, selected: &[Vec<usize>]) -> Plan {
        let mut crit_ids: HashMap<&str, usize> = HashMap::new();
        let crit = m
            .groups
            .iter()
            .map(|g| {
                let mut ids = [None; NPOP];
                for p in &g.populations {
                    if p.code != PopCode::MeasureObservation {
                        let n = crit_ids.len();
                        ids[p.code.index()] = Some(*crit_ids.entry(p.expr.source()).or_insert(n));
                    }
                }
                ids
            })
            .collect();
        let mut strat_ids: HashMap<&str, usize> = HashMap::new();
        let mut strat_per_person = vec![];
        let strat = m
            .groups
            .iter()
            .zip(selected)
            .map(|(g, sel)| {
                sel.iter()
                    .map(|i| {
                        let e = &g.stratifiers[*i].expr;
                        let n = strat_ids.len();
                        *strat_ids.entry(e.source()).or_insert_with(|| {
                            strat_per_person.push(!e.depends_on_input(ITEM_VARS));
                            n
                        })
                    })
                    .collect()
            })
            .collect();
        Plan { crit, n_crit: crit_ids.len(), strat, strat_per_person, selected: selected.to_vec() }
    }
}

/// One evaluation thread's FHIRPath environment, reused from person to person
/// (the variables' vectors are refilled, not reallocated), with the caches of
/// the current person and item.
struct PersonEnv<'s> {
    ctx: EvalContext<'s>,
    plan: &'s Plan,
    /// per distinct criterion: its result for the current item
    crit: Vec<Option<bool>>,
    /// per distinct stratifier: its value for the current item (person-level ones: person)
    strat: Vec<Option<String>>,
    patients: Vec<&'s Fact>,
    encounters: Vec<&'s Fact>,
    conditions: Vec<&'s Fact>,
}

impl<'s> PersonEnv<'s> {
    fn new(
        model: &'s ModelInfo,
        orgs: &[&'s Json],
        start: &fhirpath::DateTimeValue,
        end: &fhirpath::DateTimeValue,
        now: fhirpath::DateTimeValue,
        plan: &'s Plan,
    ) -> Self {
        let mut ctx = EvalContext::new(model, &NO_RESOURCE);
        ctx.now = Some(now);
        for v in ["patient", "patients", "encounters", "conditions", "encounter"] {
            ctx.variables.insert(v.into(), vec![]);
        }
        ctx.variables.insert("organizations".into(), orgs.iter().map(|j| fhirpath::resource_value(model, j)).collect());
        ctx.variables.insert("periodStart".into(), vec![Value::DateTime(*start)]);
        ctx.variables.insert("periodEnd".into(), vec![Value::DateTime(*end)]);
        PersonEnv {
            ctx,
            plan,
            crit: vec![None; plan.n_crit],
            strat: vec![None; plan.strat_per_person.len()],
            patients: vec![],
            encounters: vec![],
            conditions: vec![],
        }
    }

    fn set(&mut self, name: &str, facts: &[&'s Fact]) {
        let model = self.ctx.model;
        if let Some(v) = self.ctx.variables.get_mut(name) {
            v.clear();
            v.extend(facts.iter().map(|f| fhirpath::typed_resource_value(model, &f.json, f.rtype)));
        }
    }

    fn eval_person(&mut self, m: &CompiledMeasure, p: &'s Person, filter: &RowFilter, req: &EvalRequest, t: &mut Tally) -> Result<(), ReportError> {
        fn fill<'s>(out: &mut Vec<&'s Fact>, facts: &'s [Arc<Fact>], filter: &RowFilter) {
            out.clear();
            if filter.is_unrestricted() {
                out.extend(facts.iter().map(|f| &**f));
            } else {
                out.extend(facts.iter().filter(|f| visible(filter, f)).map(|f| &**f));
            }
        }
        let mut patients = std::mem::take(&mut self.patients);
        let mut encounters = std::mem::take(&mut self.encounters);
        let mut conditions = std::mem::take(&mut self.conditions);
        fill(&mut patients, &p.patients, filter);
        let r = match patients.first().copied() {
            None => Ok(()),
            Some(first) => {
                fill(&mut encounters, &p.encounters, filter);
                if m.uses_conditions {
                    fill(&mut conditions, &p.conditions, filter);
                } else {
                    conditions.clear();
                }
                self.set("patient", &[first]);
                self.set("patients", &patients);
                self.set("encounters", &encounters);
                self.set("conditions", &conditions);
                self.strat.iter_mut().for_each(|v| *v = None);
                t.persons += 1;
                match m.basis {
                    Basis::Patient => {
                        self.ctx.resource = &first.json;
                        let subject = req.want_subjects.then(|| format!("Patient/{}", first.id));
                        self.eval_item(m, &first.json, subject.as_deref(), t)
                    }
                    Basis::Encounter => {
                        let mut r = Ok(());
                        for e in &encounters {
                            self.set("encounter", &[*e]);
                            self.ctx.resource = &e.json;
                            let subject = req.want_subjects.then(|| format!("Encounter/{}", e.id));
                            r = self.eval_item(m, &e.json, subject.as_deref(), t);
                            if r.is_err() {
                                break;
                            }
                        }
                        r
                    }
                }
            }
        };
        self.patients = patients;
        self.encounters = encounters;
        self.conditions = conditions;
        r
    }

    fn eval_item(&mut self, m: &CompiledMeasure, item: &'s Json, subject: Option<&str>, t: &mut Tally) -> Result<(), ReportError> {
        t.items += 1;
        let plan = self.plan;
        self.crit.iter_mut().for_each(|c| *c = None);
        for (v, per_person) in self.strat.iter_mut().zip(&plan.strat_per_person) {
            if !per_person {
                *v = None;
            }
        }
        for (gi, g) in m.groups.iter().enumerate() {
            let Some(mem) = membership(g, &plan.crit[gi], &mut self.crit, item, &self.ctx)? else { continue };
            let gt = &mut t.groups[gi];
            gt.total.add(&mem, subject);
            for (k, si) in plan.strat[gi].iter().enumerate() {
                let v = match &self.strat[*si] {
                    Some(v) => v.clone(),
                    None => {
                        let expr = &g.stratifiers[plan.selected[gi][k]].expr;
                        let v = stratum_value(expr, item, &self.ctx)?;
                        self.strat[*si] = Some(v.clone());
                        v
                    }
                };
                gt.strata[k].1.entry(v).or_default().add(&mem, subject);
            }
        }
        Ok(())
    }
}

fn holds<'a>(e: &Expression, item: &'a Json, ctx: &EvalContext<'a>) -> Result<bool, ReportError> {
    let r = e.evaluate(item, ctx).map_err(|err| ReportError::Unprocessable(format!("criteria '{}': {err}", e.source())))?;
    Ok(match r.as_slice() {
        [] => false,
        [v] => v.to_system().as_bool() != Some(false),
        _ => true,
    })
}

/// The item's populations in group `g`; `ids` maps population codes to the
/// distinct criteria whose results `cache` holds for this item.
fn membership<'a>(
    g: &Group,
    ids: &[Option<usize>; NPOP],
    cache: &mut [Option<bool>],
    item: &'a Json,
    ctx: &EvalContext<'a>,
) -> Result<Option<Membership>, ReportError> {
    let mut pops = [false; NPOP];
    let mut crit = |c: PopCode| -> Result<Option<bool>, ReportError> {
        let (Some(p), Some(id)) = (g.population(c), ids[c.index()]) else { return Ok(None) };
        if let Some(b) = cache[id] {
            return Ok(Some(b));
        }
        let b = holds(&p.expr, item, ctx)?;
        cache[id] = Some(b);
        Ok(Some(b))
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
