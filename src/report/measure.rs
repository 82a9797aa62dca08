//! A Measure resource (R4 `measure.html`) compiled for evaluation: every
//! population and stratifier criterion is a FHIRPath expression
//! (`criteria.language = text/fhirpath`), compiled once per Measure version.
//!
//! Read from the Measure:
//! * basis — extension `cqfm-populationBasis` (`valueCode`): `Encounter`
//!   (episode measures: one item per Encounter of the person) or anything
//!   else / absent: `Patient` (one item per person);
//! * scoring — `Measure.scoring` (proportion, ratio, cohort,
//!   continuous-variable), overridable per group by extension `cqfm-scoring`;
//! * populations — `group.population.code` (measure-population codes) and
//!   `criteria.expression`;
//! * stratifiers — `group.stratifier.criteria.expression`, named by
//!   `stratifier.code` (first coding's code, else text) or `id`;
//! * aggregation for continuous variables — group extension
//!   `cqfm-aggregateMethod` (`sum`, `average`, `median`, `min`, `max`,
//!   `count`; default `average`).

use crate::fhirpath::{self, Expression};
use serde_json::Value;

pub const EXT_BASIS: &str = "http://hl7.org/fhir/us/cqfmeasures/StructureDefinition/cqfm-populationBasis";
pub const EXT_SCORING: &str = "http://hl7.org/fhir/us/cqfmeasures/StructureDefinition/cqfm-scoring";
pub const EXT_AGGREGATE: &str = "http://hl7.org/fhir/us/cqfmeasures/StructureDefinition/cqfm-aggregateMethod";
pub const POPULATION_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/measure-population";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    Patient,
    Encounter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scoring {
    Proportion,
    Ratio,
    Cohort,
    ContinuousVariable,
}

impl Scoring {
    fn parse(s: &str) -> Option<Scoring> {
        Some(match s {
            "proportion" => Scoring::Proportion,
            "ratio" => Scoring::Ratio,
            "cohort" => Scoring::Cohort,
            "continuous-variable" => Scoring::ContinuousVariable,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PopCode {
    InitialPopulation,
    Denominator,
    DenominatorExclusion,
    DenominatorException,
    Numerator,
    NumeratorExclusion,
    MeasurePopulation,
    MeasurePopulationExclusion,
    MeasureObservation,
}

impl PopCode {
    pub const ALL: [PopCode; 9] = [
        PopCode::InitialPopulation,
        PopCode::Denominator,
        PopCode::DenominatorExclusion,
        PopCode::DenominatorException,
        PopCode::Numerator,
        PopCode::NumeratorExclusion,
        PopCode::MeasurePopulation,
        PopCode::MeasurePopulationExclusion,
        PopCode::MeasureObservation,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            PopCode::InitialPopulation => "initial-population",
            PopCode::Denominator => "denominator",
            PopCode::DenominatorExclusion => "denominator-exclusion",
            PopCode::DenominatorException => "denominator-exception",
            PopCode::Numerator => "numerator",
            PopCode::NumeratorExclusion => "numerator-exclusion",
            PopCode::MeasurePopulation => "measure-population",
            PopCode::MeasurePopulationExclusion => "measure-population-exclusion",
            PopCode::MeasureObservation => "measure-observation",
        }
    }
    pub fn parse(s: &str) -> Option<PopCode> {
        PopCode::ALL.iter().copied().find(|p| p.as_str() == s)
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Sum,
    Average,
    Median,
    Min,
    Max,
    Count,
}

#[derive(Debug, Clone)]
pub struct Population {
    pub code: PopCode,
    pub id: Option<String>,
    pub expr: Expression,
}

#[derive(Debug, Clone)]
pub struct Stratifier {
    /// the name used in `stratify` selections and CSV (`code` of the stratifier)
    pub name: String,
    /// the stratifier's `code` as written (CodeableConcept), for the report
    pub code: Value,
    pub expr: Expression,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub id: Option<String>,
    pub code: Option<Value>,
    pub scoring: Scoring,
    pub aggregate: Aggregate,
    pub populations: Vec<Population>,
    pub stratifiers: Vec<Stratifier>,
}

impl Group {
    pub fn population(&self, code: PopCode) -> Option<&Population> {
        self.populations.iter().find(|p| p.code == code)
    }
    /// The population codes this group reports (in definition order).
    pub fn codes(&self) -> Vec<PopCode> {
        self.populations.iter().map(|p| p.code).collect()
    }
}

#[derive(Debug, Clone)]
pub struct CompiledMeasure {
    pub id: String,
    pub url: Option<String>,
    pub version: Option<String>,
    pub title: Option<String>,
    pub basis: Basis,
    pub groups: Vec<Group>,
    /// the canonical URLs of the treatment standards this measure checks (`relatedArtifact`)
    pub standards: Vec<String>,
    /// which facts the expressions use (so evaluation skips parsing the rest)
    pub uses_conditions: bool,
    pub uses_organizations: bool,
}

impl CompiledMeasure {
    /// `Measure/{id}` or the canonical `url|version`, for `MeasureReport.measure`.
    pub fn canonical(&self) -> String {
        match (&self.url, &self.version) {
            (Some(u), Some(v)) => format!("{u}|{v}"),
            (Some(u), None) => u.clone(),
            _ => format!("Measure/{}", self.id),
        }
    }

    pub fn compile(m: &Value) -> Result<CompiledMeasure, String> {
        if m.get("resourceType").and_then(Value::as_str) != Some("Measure") {
            return Err("not a Measure resource".into());
        }
        let id = m.get("id").and_then(Value::as_str).ok_or("Measure without id")?.to_owned();
        let s = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
        let basis = match ext_code(m, EXT_BASIS).as_deref() {
            Some("Encounter") => Basis::Encounter,
            _ => Basis::Patient,
        };
        let measure_scoring = m
            .pointer("/scoring/coding/0/code")
            .and_then(Value::as_str)
            .map(|c| Scoring::parse(c).ok_or(format!("Measure.scoring '{c}' is not supported")))
            .transpose()?;
        let mut groups = vec![];
        let mut sources = String::new();
        for (gi, g) in m.get("group").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let scoring = match ext_code_cc(g, EXT_SCORING) {
                Some(c) => Scoring::parse(&c).ok_or(format!("group {gi}: scoring '{c}' is not supported"))?,
                None => measure_scoring.ok_or("Measure.scoring is missing")?,
            };
            let aggregate = match ext_code(g, EXT_AGGREGATE).as_deref() {
                None | Some("average") => Aggregate::Average,
                Some("sum") => Aggregate::Sum,
                Some("median") => Aggregate::Median,
                Some("min") => Aggregate::Min,
                Some("max") => Aggregate::Max,
                Some("count") => Aggregate::Count,
                Some(o) => return Err(format!("group {gi}: aggregate method '{o}' is not supported")),
            };
            let mut populations = vec![];
            for (pi, p) in g.get("population").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let code = p
                    .pointer("/code/coding")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find_map(|c| c.get("code").and_then(Value::as_str).and_then(PopCode::parse))
                    .ok_or(format!("group {gi} population {pi}: code is not a measure-population code"))?;
                if populations.iter().any(|x: &Population| x.code == code) {
                    return Err(format!("group {gi}: population {} given twice", code.as_str()));
                }
                let src = criteria(p).map_err(|e| format!("group {gi} population {}: {e}", code.as_str()))?;
                sources.push_str(&src);
                let expr = fhirpath::compile(&src).map_err(|e| format!("group {gi} population {}: {e}", code.as_str()))?;
                populations.push(Population { code, id: p.get("id").and_then(Value::as_str).map(str::to_owned), expr });
            }
            if !populations.iter().any(|p| p.code == PopCode::InitialPopulation) {
                return Err(format!("group {gi}: no initial-population"));
            }
            if scoring == Scoring::ContinuousVariable && !populations.iter().any(|p| p.code == PopCode::MeasureObservation) {
                return Err(format!("group {gi}: continuous-variable scoring needs a measure-observation"));
            }
            if matches!(scoring, Scoring::Proportion | Scoring::Ratio) && !populations.iter().any(|p| p.code == PopCode::Numerator) {
                return Err(format!("group {gi}: {scoring:?} scoring needs a numerator"));
            }
            let mut stratifiers = vec![];
            for (si, st) in g.get("stratifier").and_then(Value::as_array).into_iter().flatten().enumerate() {
                if st.get("component").is_some() {
                    return Err(format!("group {gi} stratifier {si}: component stratifiers are not supported"));
                }
                let name = st
                    .pointer("/code/coding/0/code")
                    .or_else(|| st.pointer("/code/text"))
                    .or_else(|| st.get("id"))
                    .and_then(Value::as_str)
                    .ok_or(format!("group {gi} stratifier {si}: needs a code or an id"))?
                    .to_owned();
                let src = criteria(st).map_err(|e| format!("group {gi} stratifier {name}: {e}"))?;
                sources.push_str(&src);
                let expr = fhirpath::compile(&src).map_err(|e| format!("group {gi} stratifier {name}: {e}"))?;
                let code = st.get("code").cloned().unwrap_or_else(|| serde_json::json!({"text": name}));
                stratifiers.push(Stratifier { name, code, expr });
            }
            groups.push(Group {
                id: g.get("id").and_then(Value::as_str).map(str::to_owned),
                code: g.get("code").cloned(),
                scoring,
                aggregate,
                populations,
                stratifiers,
            });
        }
        if groups.is_empty() {
            return Err("Measure has no group".into());
        }
        let standards = m
            .get("relatedArtifact")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| a.get("resource").and_then(Value::as_str).map(str::to_owned))
            .collect();
        Ok(CompiledMeasure {
            id,
            url: s("url"),
            version: s("version"),
            title: s("title").or_else(|| s("name")),
            basis,
            groups,
            standards,
            uses_conditions: sources.contains("%conditions"),
            uses_organizations: sources.contains("%organizations"),
        })
    }
}

fn criteria(p: &Value) -> Result<String, String> {
    let c = p.get("criteria").ok_or("criteria missing")?;
    match c.get("language").and_then(Value::as_str) {
        Some("text/fhirpath") => {}
        Some(l) => return Err(format!("criteria language '{l}' is not supported (use text/fhirpath)")),
        None => return Err("criteria.language missing".into()),
    }
    c.get("expression").and_then(Value::as_str).map(str::to_owned).ok_or_else(|| "criteria.expression missing".into())
}

fn ext<'a>(v: &'a Value, url: &str) -> Option<&'a Value> {
    v.get("extension")?.as_array()?.iter().find(|e| e.get("url").and_then(Value::as_str) == Some(url))
}

fn ext_code(v: &Value, url: &str) -> Option<String> {
    let e = ext(v, url)?;
    e.get("valueCode").or_else(|| e.pointer("/valueCodeableConcept/coding/0/code")).and_then(Value::as_str).map(str::to_owned)
}

fn ext_code_cc(v: &Value, url: &str) -> Option<String> {
    ext_code(v, url)
}
