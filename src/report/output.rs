//! MeasureReport JSON (R4 `measurereport.html`) and CSV for an evaluated
//! measure. Suppressed counts have no `count` but `_count` with the
//! `data-absent-reason` extension `masked`; suppressed scores are left
//! out the same way. CSV is long-format: one line per (group, stratifier,
//! stratum, population) and one `measure-score` line per cell, suppressed
//! values written as `masked`.

use super::evaluate::{Cell, EvalRequest, Tally};
use super::measure::{Aggregate, CompiledMeasure, Group, PopCode, Scoring, POPULATION_SYSTEM};
use super::suppress::{suppress, Mask};
use serde_json::{json, Map, Value};

pub const DATA_ABSENT: &str = "http://hl7.org/fhir/StructureDefinition/data-absent-reason";
pub const EXT_MIN_CELL: &str = "https://carebridge.example/fhir/StructureDefinition/small-cell-threshold";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportType {
    Summary,
    SubjectList,
    Individual,
}

impl ReportType {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportType::Summary => "summary",
            ReportType::SubjectList => "subject-list",
            ReportType::Individual => "individual",
        }
    }
}

/// The masks of every group (summary reports), or `None` (subject-level reports, no suppression).
pub fn masks(m: &CompiledMeasure, t: &Tally, k: u64) -> Vec<Mask> {
    m.groups.iter().zip(&t.groups).map(|(g, gt)| suppress(g, gt, k)).collect()
}

/// The score of a cell: proportion/ratio numerator ÷ (denominator − exclusions − exceptions), or the aggregate of the observations.
pub fn score(g: &Group, c: &Cell) -> Option<f64> {
    match g.scoring {
        Scoring::Cohort => None,
        Scoring::Proportion => {
            let d = c.count(PopCode::Denominator) as f64
                - c.count(PopCode::DenominatorExclusion) as f64
                - c.count(PopCode::DenominatorException) as f64;
            (d > 0.0).then(|| c.count(PopCode::Numerator) as f64 / d)
        }
        Scoring::Ratio => {
            let d = c.count(PopCode::Denominator) as f64 - c.count(PopCode::DenominatorExclusion) as f64;
            (d > 0.0).then(|| c.count(PopCode::Numerator) as f64 / d)
        }
        Scoring::ContinuousVariable => {
            let o = &c.obs;
            if o.is_empty() {
                return if g.aggregate == Aggregate::Count { Some(0.0) } else { None };
            }
            Some(match g.aggregate {
                Aggregate::Sum => o.iter().sum(),
                Aggregate::Average => o.iter().sum::<f64>() / o.len() as f64,
                Aggregate::Count => o.len() as f64,
                Aggregate::Min => o.iter().cloned().fold(f64::INFINITY, f64::min),
                Aggregate::Max => o.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                Aggregate::Median => {
                    let mut s = o.clone();
                    s.sort_by(|a, b| a.total_cmp(b));
                    let n = s.len();
                    if n % 2 == 1 {
                        s[n / 2]
                    } else {
                        (s[n / 2 - 1] + s[n / 2]) / 2.0
                    }
                }
            })
        }
    }
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn masked() -> Value {
    json!({"extension": [{"url": DATA_ABSENT, "valueCode": "masked"}]})
}

fn populations(g: &Group, c: &Cell, mask: Option<&[bool; 9]>, lists: &mut Vec<Value>, list_prefix: Option<&str>) -> Vec<Value> {
    g.codes()
        .into_iter()
        .map(|p| {
            let mut o = Map::new();
            o.insert("code".into(), json!({"coding": [{"system": POPULATION_SYSTEM, "code": p.as_str()}]}));
            if mask.is_some_and(|m| m[p.index()]) {
                o.insert("_count".into(), masked());
            } else {
                o.insert("count".into(), json!(c.count(p)));
            }
            if let Some(prefix) = list_prefix {
                if let Some(subjects) = c.subjects.get(p.index()) {
                    let id = format!("{prefix}-{}", p.as_str());
                    lists.push(json!({
                        "resourceType": "List", "id": id, "status": "current", "mode": "snapshot",
                        "entry": subjects.iter().map(|s| json!({"item": {"reference": s}})).collect::<Vec<_>>(),
                    }));
                    o.insert("subjectResults".into(), json!({"reference": format!("#{id}")}));
                }
            }
            Value::Object(o)
        })
        .collect()
}

/// Build the MeasureReport. `masks` is given for summary reports (suppressed
/// cells); subject-level reports carry subjects and no suppression.
pub fn measure_report(m: &CompiledMeasure, t: &Tally, req: &EvalRequest, rtype: ReportType, masks: Option<&[Mask]>, k: u64, now: &str) -> Value {
    let mut lists = vec![];
    let mut groups = vec![];
    for (gi, (g, gt)) in m.groups.iter().zip(&t.groups).enumerate() {
        let gm = masks.map(|ms| &ms[gi]);
        let mut o = Map::new();
        if let Some(id) = &g.id {
            o.insert("id".into(), json!(id));
        }
        if let Some(c) = &g.code {
            o.insert("code".into(), c.clone());
        }
        let prefix = (rtype != ReportType::Summary).then(|| format!("g{gi}"));
        o.insert("population".into(), json!(populations(g, &gt.total, gm.map(|x| &x.total), &mut lists, prefix.as_deref())));
        if let Some(s) = score(g, &gt.total) {
            if gm.is_some_and(|x| x.total_score) {
                o.insert("_measureScore".into(), masked());
            } else {
                o.insert("measureScore".into(), json!({"value": round4(s)}));
            }
        }
        let mut strat = vec![];
        for (d, (si, strata)) in gt.strata.iter().enumerate() {
            let st = &g.stratifiers[*si];
            let mut stratum = vec![];
            for (v, c) in strata {
                let sm = gm.and_then(|x| x.strata[d].get(v));
                let mut so = Map::new();
                so.insert("value".into(), json!({"text": v}));
                so.insert("population".into(), json!(populations(g, c, sm.map(|x| &x.0), &mut lists, None)));
                if let Some(s) = score(g, c) {
                    if sm.is_some_and(|x| x.1) {
                        so.insert("_measureScore".into(), masked());
                    } else {
                        so.insert("measureScore".into(), json!({"value": round4(s)}));
                    }
                }
                stratum.push(Value::Object(so));
            }
            strat.push(json!({"code": [st.code.clone()], "stratum": stratum}));
        }
        if !strat.is_empty() {
            o.insert("stratifier".into(), json!(strat));
        }
        groups.push(Value::Object(o));
    }
    let mut r = Map::new();
    r.insert("resourceType".into(), json!("MeasureReport"));
    if !lists.is_empty() {
        r.insert("contained".into(), json!(lists));
    }
    if masks.is_some() {
        r.insert("extension".into(), json!([{"url": EXT_MIN_CELL, "valueInteger": k}]));
    }
    r.insert("status".into(), json!("complete"));
    r.insert("type".into(), json!(rtype.as_str()));
    r.insert("measure".into(), json!(m.canonical()));
    if rtype == ReportType::Individual {
        if let Some(s) = &req.subject {
            r.insert("subject".into(), json!({"reference": format!("Patient/{s}")}));
        }
    }
    r.insert("date".into(), json!(now));
    r.insert("period".into(), json!({"start": req.period_start, "end": req.period_end}));
    r.insert("group".into(), json!(groups));
    Value::Object(r)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The report as CSV (long format, header line first).
pub fn csv(m: &CompiledMeasure, t: &Tally, req: &EvalRequest, masks: Option<&[Mask]>) -> String {
    let mut out = String::from("measure,period_start,period_end,group,stratifier,stratum,population,value\n");
    let head = format!("{},{},{}", csv_field(&m.canonical()), csv_field(&req.period_start), csv_field(&req.period_end));
    let mut line = |group: &str, strat: &str, stratum: &str, pop: &str, value: String| {
        out.push_str(&format!("{head},{},{},{},{},{}\n", csv_field(group), csv_field(strat), csv_field(stratum), pop, value));
    };
    for (gi, (g, gt)) in m.groups.iter().zip(&t.groups).enumerate() {
        let gname = g.id.clone().unwrap_or_else(|| format!("group-{gi}"));
        let gm = masks.map(|ms| &ms[gi]);
        let mut cell = |strat: &str, stratum: &str, c: &Cell, cm: Option<(&[bool; 9], bool)>| {
            for p in g.codes() {
                let v = if cm.is_some_and(|x| x.0[p.index()]) { "masked".to_owned() } else { c.count(p).to_string() };
                line(&gname, strat, stratum, p.as_str(), v);
            }
            if let Some(s) = score(g, c) {
                let v = if cm.is_some_and(|x| x.1) { "masked".to_owned() } else { round4(s).to_string() };
                line(&gname, strat, stratum, "measure-score", v);
            }
        };
        cell("", "", &gt.total, gm.map(|x| (&x.total, x.total_score)));
        for (d, (si, strata)) in gt.strata.iter().enumerate() {
            for (v, c) in strata {
                let sm = gm.and_then(|x| x.strata[d].get(v)).map(|x| (&x.0, x.1));
                cell(&g.stratifiers[*si].name, v, c, sm);
            }
        }
    }
    out
}
