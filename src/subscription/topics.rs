//! Subscription topics as data: SubscriptionTopic-shaped JSON files
//! (R5 `subscriptiontopic.html` structure, as the R4 Subscriptions Backport
//! IG 1.1 uses them by canonical URL) shipped in `profiles/topics/` and
//! compiled into the binary. A topic names resource triggers (type, the
//! interactions create/update/delete, a FHIRPath criterion over `%previous`
//! and `%current`) and the search parameters subscribers may filter by.

use crate::fhirpath::{self, EvalContext, Expression, ModelInfo};
use serde_json::Value;
use std::sync::OnceLock;

/// The shipped topic definitions (one JSON file each).
const SHIPPED: &[&str] = &[
    include_str!("../../profiles/topics/encounter-discharge.json"),
    include_str!("../../profiles/topics/referral-received.json"),
    include_str!("../../profiles/topics/task-status-changed.json"),
    include_str!("../../profiles/topics/new-lab-result.json"),
    include_str!("../../profiles/topics/careplan-activity.json"),
];

#[derive(Debug, Clone)]
pub struct Trigger {
    pub resource: String,
    pub create: bool,
    pub update: bool,
    pub delete: bool,
    /// FHIRPath over `%previous` (empty on create) and `%current` (empty on delete)
    pub criteria: Option<Expression>,
}

#[derive(Debug, Clone)]
pub struct Topic {
    pub url: String,
    pub version: Option<String>,
    pub title: String,
    pub triggers: Vec<Trigger>,
    /// (resource type, search parameter) pairs subscribers may filter by
    pub can_filter_by: Vec<(String, String)>,
    /// the definition as shipped
    pub json: Value,
}

impl Topic {
    /// The resource types this topic fires on.
    pub fn resource_types(&self) -> impl Iterator<Item = &str> {
        self.triggers.iter().map(|t| t.resource.as_str())
    }

    /// Does a change of a resource fire this topic? `previous`/`current`
    /// are the versions before and after (None for create / delete).
    pub fn fires(&self, rtype: &str, previous: Option<&Value>, current: Option<&Value>) -> bool {
        self.triggers.iter().any(|t| {
            if t.resource != rtype {
                return false;
            }
            let ok_interaction = match (previous, current) {
                (None, Some(_)) => t.create,
                (Some(_), Some(_)) => t.update,
                (Some(_), None) => t.delete,
                (None, None) => false,
            };
            if !ok_interaction {
                return false;
            }
            match &t.criteria {
                None => true,
                Some(expr) => eval_criteria(expr, previous, current),
            }
        })
    }
}

fn model() -> &'static ModelInfo {
    static M: OnceLock<ModelInfo> = OnceLock::new();
    M.get_or_init(ModelInfo::empty)
}

fn node<'a>(m: &'a ModelInfo, v: Option<&'a Value>) -> Vec<fhirpath::Value<'a>> {
    static ID: OnceLock<Expression> = OnceLock::new();
    let id = ID.get_or_init(|| fhirpath::compile("%resource").expect("constant expression"));
    match v {
        Some(v) => id.evaluate(v, &EvalContext::new(m, v)).unwrap_or_default(),
        None => vec![],
    }
}

fn eval_criteria(expr: &Expression, previous: Option<&Value>, current: Option<&Value>) -> bool {
    let m = model();
    let empty = Value::Null;
    let this = current.or(previous).unwrap_or(&empty);
    let ctx = EvalContext::new(m, this).with_variable("previous", node(m, previous)).with_variable("current", node(m, current));
    matches!(expr.evaluate_bool(this, &ctx), Ok(Some(true)))
}

#[derive(Debug)]
pub struct Topics {
    pub all: Vec<Topic>,
}

impl Topics {
    pub fn get(&self, url: &str) -> Option<&Topic> {
        // a canonical may carry `|version`
        let (u, v) = match url.split_once('|') {
            Some((u, v)) => (u, Some(v)),
            None => (url, None),
        };
        self.all.iter().find(|t| t.url == u && (v.is_none() || t.version.as_deref() == v))
    }

    /// Does any topic fire on this resource type?
    pub fn watches(&self, rtype: &str) -> bool {
        self.all.iter().any(|t| t.resource_types().any(|r| r == rtype))
    }
}

/// Parse one SubscriptionTopic-shaped definition.
pub fn parse_topic(v: &Value) -> Result<Topic, String> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let url = s("url").ok_or("topic has no url")?;
    let mut triggers = vec![];
    for t in v.get("resourceTrigger").and_then(Value::as_array).into_iter().flatten() {
        let resource = t.get("resource").and_then(Value::as_str).ok_or_else(|| format!("{url}: trigger without resource"))?;
        let resource = resource.rsplit('/').next().unwrap_or(resource).to_owned();
        let inter: Vec<&str> = t.get("supportedInteraction").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        let all = inter.is_empty();
        let criteria = match t.get("fhirPathCriteria").and_then(Value::as_str) {
            Some(src) => Some(fhirpath::compile(src).map_err(|e| format!("{url}: fhirPathCriteria: {e}"))?),
            None => None,
        };
        triggers.push(Trigger {
            resource,
            create: all || inter.contains(&"create"),
            update: all || inter.contains(&"update"),
            delete: all || inter.contains(&"delete"),
            criteria,
        });
    }
    if triggers.is_empty() {
        return Err(format!("{url}: topic has no resourceTrigger"));
    }
    let can_filter_by = v
        .get("canFilterBy")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| Some((f.get("resource")?.as_str()?.to_owned(), f.get("filterParameter")?.as_str()?.to_owned())))
        .collect();
    Ok(Topic { url, version: s("version"), title: s("title").unwrap_or_default(), triggers, can_filter_by, json: v.clone() })
}

/// The shipped topics (parsed once).
pub fn topics() -> &'static Topics {
    static T: OnceLock<Topics> = OnceLock::new();
    T.get_or_init(|| Topics {
        all: SHIPPED
            .iter()
            .map(|s| {
                let v: Value = serde_json::from_str(s).expect("shipped topic is JSON");
                parse_topic(&v).expect("shipped topic is valid")
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn discharge_fires_on_transition_to_finished_only() {
        let t = topics().get("https://carebridge.example/fhir/SubscriptionTopic/encounter-discharge").unwrap();
        let ip = json!({"resourceType":"Encounter","status":"in-progress"});
        let fin = json!({"resourceType":"Encounter","status":"finished"});
        assert!(t.fires("Encounter", Some(&ip), Some(&fin)));
        assert!(t.fires("Encounter", None, Some(&fin)));
        assert!(!t.fires("Encounter", Some(&fin), Some(&fin)));
        assert!(!t.fires("Encounter", None, Some(&ip)));
        assert!(!t.fires("Encounter", Some(&fin), None));
        assert!(!t.fires("Observation", None, Some(&fin)));
    }

    #[test]
    fn every_shipped_topic_parses() {
        assert_eq!(topics().all.len(), SHIPPED.len());
        let ts = topics().get("https://carebridge.example/fhir/SubscriptionTopic/task-status-changed").unwrap();
        let a = json!({"resourceType":"Task","status":"requested"});
        let b = json!({"resourceType":"Task","status":"accepted"});
        assert!(ts.fires("Task", Some(&a), Some(&b)));
        assert!(!ts.fires("Task", None, Some(&a)));
    }
}
