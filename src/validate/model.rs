//! Compiled StructureDefinitions: every snapshot of the loaded packages turned
//! once, at start, into a compact element tree per type — cardinality, types
//! (with profiles and target profiles), choice elements, content references,
//! fixed/pattern values, bindings and constraints — with a per-element map
//! from JSON property name to child element (R4 `elementdefinition.html`,
//! `json.html` for choice-type property names). Slices (R4 `profiling.html`
//! §5.1.0.9 "Slicing") are kept apart from the plain children: each sliced
//! element lists its slices and its discriminators; a slice's own children hang
//! under the slice element.

use crate::fhir::definitions::DefinitionsError;
use serde_json::Value;
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Max {
    N(u32),
    Unbounded,
}

impl Max {
    pub fn allows_many(self) -> bool {
        !matches!(self, Max::N(0) | Max::N(1))
    }
}

#[derive(Debug, Clone)]
pub struct TypeRef {
    /// type code (`string`, `HumanName`, `Reference`, `http://hl7.org/fhirpath/System.String`, …)
    pub code: String,
    pub profiles: Vec<String>,
    pub target_profiles: Vec<String>,
}

#[derive(Debug)]
pub struct Constraint {
    pub key: String,
    pub severity_error: bool,
    pub human: String,
    pub expression: Option<String>,
    /// the definition that introduced the constraint (`constraint.source`)
    pub source: Option<String>,
    /// the expression compiled once by the validator (None: did not compile)
    pub compiled: std::sync::OnceLock<Option<crate::fhirpath::Expression>>,
}

#[derive(Debug, Clone)]
pub struct Binding {
    pub strength: String,
    pub value_set: Option<String>,
}

/// `ElementDefinition.slicing.discriminator`: how instances are sorted into slices.
#[derive(Debug, Clone, PartialEq)]
pub struct Discriminator {
    /// value | exists | pattern | type | profile
    pub kind: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Slicing {
    pub discriminators: Vec<Discriminator>,
    pub ordered: bool,
    /// closed | open | openAtEnd
    pub rules: String,
}

#[derive(Debug, Clone)]
pub struct Element {
    pub id: String,
    pub path: String,
    /// last path segment without `[x]`
    pub name: String,
    pub min: u32,
    pub max: Max,
    pub types: Vec<TypeRef>,
    pub choice: bool,
    /// `#Questionnaire.item` → index of that element in the same definition
    pub content_ref: Option<usize>,
    pub constraints: Vec<Arc<Constraint>>,
    pub fixed: Option<Value>,
    pub pattern: Option<Value>,
    pub binding: Option<Binding>,
    pub max_length: Option<usize>,
    pub slice_name: Option<String>,
    pub slicing: Option<Slicing>,
    /// `minValue[x]` / `maxValue[x]` (as given)
    pub min_value: Option<Value>,
    pub max_value: Option<Value>,
    /// `base.min` / `base.max`: the cardinality in the definition that introduced the element
    pub base_min: u32,
    pub base_max: Max,
}

/// One compiled StructureDefinition.
#[derive(Debug)]
pub struct StructDef {
    pub url: String,
    pub type_name: String,
    pub kind: String,
    pub is_abstract: bool,
    pub base: Option<String>,
    pub elements: Vec<Element>,
    /// children of each element (indices into `elements`)
    pub children: Vec<Vec<usize>>,
    /// JSON property name → (child element, index of the type for choice elements)
    pub props: Vec<FxHashMap<String, (usize, Option<usize>)>>,
    /// slices of each sliced element (indices into `elements`, in order)
    pub slices: Vec<Vec<usize>>,
    /// element id → index
    pub by_id: FxHashMap<String, usize>,
    /// element path → index (plain elements, not slices)
    pub by_path: FxHashMap<String, usize>,
    /// `constraint` (a profile) or `specialization`
    pub derivation: String,
    pub version: Option<String>,
    pub name: String,
    /// extension contexts: (type, expression)
    pub contexts: Vec<(String, String)>,
}

/// `valueQuantity` for element `value[x]` with type `Quantity`.
pub fn choice_name(base: &str, type_code: &str) -> String {
    let mut s = String::with_capacity(base.len() + type_code.len());
    s.push_str(base);
    let mut c = type_code.chars();
    if let Some(f) = c.next() {
        s.extend(f.to_uppercase());
        s.push_str(c.as_str());
    }
    s
}

fn str_of(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}

fn strings(v: &Value, k: &str) -> Vec<String> {
    v.get(k).and_then(Value::as_array).map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

impl StructDef {
    /// Compile from a StructureDefinition JSON with a snapshot.
    pub fn compile(sd: &Value) -> Option<StructDef> {
        let elems = sd.pointer("/snapshot/element")?.as_array()?;
        let mut elements = Vec::with_capacity(elems.len());
        let mut constraint_cache: HashMap<String, Arc<Constraint>> = HashMap::new();
        for e in elems {
            let path = str_of(e, "path")?;
            let id = str_of(e, "id").unwrap_or_else(|| path.clone());
            let last = path.rsplit('.').next().unwrap_or(&path);
            let choice = last.ends_with("[x]");
            let name = last.trim_end_matches("[x]").to_owned();
            let max = match e.get("max").and_then(Value::as_str) {
                Some("*") => Max::Unbounded,
                Some(n) => Max::N(n.parse().unwrap_or(1)),
                None => Max::Unbounded,
            };
            let types = e
                .get("type")
                .and_then(Value::as_array)
                .map(|ts| {
                    ts.iter()
                        .filter_map(|t| {
                            // System types carry the FHIR type they stand for in an extension
                            let fhir_type = t.get("extension").and_then(Value::as_array).and_then(|xs| {
                                xs.iter()
                                    .find(|x| x["url"] == "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type")
                                    .and_then(|x| x.get("valueUrl").or_else(|| x.get("valueUri")))
                                    .and_then(Value::as_str)
                                    .map(str::to_owned)
                            });
                            Some(TypeRef {
                                code: fhir_type.unwrap_or(str_of(t, "code")?),
                                profiles: strings(t, "profile"),
                                target_profiles: strings(t, "targetProfile"),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut constraints = vec![];
            for c in e.get("constraint").and_then(Value::as_array).into_iter().flatten() {
                let key = str_of(c, "key").unwrap_or_default();
                let expr = str_of(c, "expression");
                let cache_key = format!("{key}\u{0}{}", expr.as_deref().unwrap_or(""));
                let arc = constraint_cache
                    .entry(cache_key)
                    .or_insert_with(|| {
                        Arc::new(Constraint {
                            key: key.clone(),
                            severity_error: c.get("severity").and_then(Value::as_str) == Some("error"),
                            human: str_of(c, "human").unwrap_or_default(),
                            expression: expr.clone(),
                            source: str_of(c, "source"),
                            compiled: std::sync::OnceLock::new(),
                        })
                    })
                    .clone();
                constraints.push(arc);
            }
            let (mut fixed, mut pattern, mut min_value, mut max_value) = (None, None, None, None);
            if let Some(obj) = e.as_object() {
                for (k, v) in obj {
                    if k.starts_with("fixed") {
                        fixed = Some(v.clone());
                    } else if k.starts_with("pattern") {
                        pattern = Some(v.clone());
                    } else if k.starts_with("minValue") {
                        min_value = Some(v.clone());
                    } else if k.starts_with("maxValue") {
                        max_value = Some(v.clone());
                    }
                }
            }
            let slicing = e.get("slicing").map(|sl| Slicing {
                discriminators: sl
                    .get("discriminator")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|d| Discriminator { kind: str_of(d, "type").unwrap_or_default(), path: str_of(d, "path").unwrap_or_else(|| "$this".into()) })
                    .collect(),
                ordered: sl.get("ordered").and_then(Value::as_bool).unwrap_or(false),
                rules: str_of(sl, "rules").unwrap_or_else(|| "open".into()),
            });
            let binding = e.get("binding").map(|b| Binding {
                strength: str_of(b, "strength").unwrap_or_default(),
                value_set: str_of(b, "valueSet"),
            });
            elements.push((
                Element {
                    id,
                    path,
                    name,
                    min: e.get("min").and_then(Value::as_u64).unwrap_or(0) as u32,
                    max,
                    types,
                    choice,
                    content_ref: None,
                    constraints,
                    fixed,
                    pattern,
                    binding,
                    max_length: e.get("maxLength").and_then(Value::as_u64).map(|n| n as usize),
                    slice_name: str_of(e, "sliceName"),
                    slicing,
                    min_value,
                    max_value,
                    base_min: e.pointer("/base/min").and_then(Value::as_u64).map_or(0, |n| n as u32),
                    base_max: match e.pointer("/base/max").and_then(Value::as_str) {
                        Some("*") | None => Max::Unbounded,
                        Some(n) => Max::N(n.parse().unwrap_or(1)),
                    },
                },
                str_of(e, "contentReference"),
            ));
        }
        let by_id: HashMap<String, usize> = elements.iter().enumerate().map(|(i, (e, _))| (e.id.clone(), i)).collect();
        let by_path: HashMap<String, usize> =
            elements.iter().enumerate().rev().filter(|(_, (e, _))| !e.id.contains(':')).map(|(i, (e, _))| (e.path.clone(), i)).collect();
        let mut elements: Vec<Element> = elements
            .into_iter()
            .map(|(mut e, cref)| {
                if let Some(r) = cref {
                    let target = r.split('#').nth(1).unwrap_or(&r);
                    e.content_ref = by_path.get(target).or_else(|| by_id.get(target)).copied();
                }
                e
            })
            .collect();
        let n = elements.len();
        let mut children = vec![Vec::new(); n];
        let mut slices = vec![Vec::new(); n];
        for (i, e) in elements.iter().enumerate() {
            // a slice (`a.b:s`) belongs to its sliced element (`a.b`); any other element to
            // the element whose id is this id minus its last segment
            let Some((parent_id, last)) = e.id.rsplit_once('.').map(|(p, l)| (Some(p), l)).or(Some((None, e.id.as_str()))) else { continue };
            if let Some((base, _)) = last.rsplit_once(':') {
                let sliced = match parent_id {
                    Some(p) => format!("{p}.{base}"),
                    None => base.to_owned(),
                };
                if let Some(&s) = by_id.get(&sliced) {
                    slices[s].push(i);
                }
                continue;
            }
            if let Some(p) = parent_id.and_then(|p| by_id.get(p)) {
                children[*p].push(i);
            }
        }
        let mut props = vec![FxHashMap::default(); n];
        for (p, kids) in children.iter().enumerate() {
            for &c in kids {
                let e = &elements[c];
                if e.choice {
                    for (ti, t) in e.types.iter().enumerate() {
                        props[p].insert(choice_name(&e.name, &t.code), (c, Some(ti)));
                    }
                } else {
                    props[p].insert(e.name.clone(), (c, None));
                }
            }
        }
        elements.shrink_to_fit();
        let by_id: FxHashMap<String, usize> = by_id.into_iter().collect();
        let by_path: FxHashMap<String, usize> = by_path.into_iter().collect();
        Some(StructDef {
            slices,
            by_id,
            by_path,
            derivation: str_of(sd, "derivation").unwrap_or_default(),
            version: str_of(sd, "version"),
            name: str_of(sd, "name").unwrap_or_default(),
            contexts: sd
                .get("context")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|c| (str_of(c, "type").unwrap_or_default(), str_of(c, "expression").unwrap_or_default()))
                .collect(),
            url: str_of(sd, "url")?,
            type_name: str_of(sd, "type")?,
            kind: str_of(sd, "kind").unwrap_or_default(),
            is_abstract: sd.get("abstract").and_then(Value::as_bool).unwrap_or(false),
            base: str_of(sd, "baseDefinition"),
            elements,
            children,
            props,
        })
    }
}

/// Every compiled definition, by canonical URL and (for base types) by type name.
#[derive(Debug, Default, Clone)]
pub struct Model {
    pub by_url: HashMap<String, Arc<StructDef>>,
    pub by_type: FxHashMap<String, Arc<StructDef>>,
}

impl Model {
    /// Load and compile every StructureDefinition with a snapshot in a package folder.
    pub fn add_package(&mut self, dir: &Path) -> Result<usize, DefinitionsError> {
        let index_path = dir.join(".index.json");
        let raw = std::fs::read(&index_path).map_err(|e| DefinitionsError::Io(index_path.display().to_string(), e))?;
        let index: Value = serde_json::from_slice(&raw).map_err(|e| DefinitionsError::Parse(index_path.display().to_string(), e))?;
        let files: Vec<String> = index["files"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["resourceType"] == "StructureDefinition")
            .filter_map(|f| f["filename"].as_str().map(str::to_owned))
            .collect();
        // parse on all cores
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let chunk = files.len().div_ceil(threads).max(1);
        let results: Vec<Result<Vec<StructDef>, DefinitionsError>> = std::thread::scope(|s| {
            let handles: Vec<_> = files
                .chunks(chunk)
                .map(|names| {
                    s.spawn(move || {
                        let mut out = vec![];
                        for name in names {
                            let p = dir.join(name);
                            let raw = std::fs::read(&p).map_err(|e| DefinitionsError::Io(p.display().to_string(), e))?;
                            let v: Value = serde_json::from_slice(&raw).map_err(|e| DefinitionsError::Parse(p.display().to_string(), e))?;
                            if let Some(sd) = StructDef::compile(&v) {
                                out.push(sd);
                            }
                        }
                        Ok(out)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Ok(vec![]))).collect()
        });
        let mut n = 0;
        for r in results {
            for sd in r? {
                n += 1;
                self.insert(sd);
            }
        }
        Ok(n)
    }

    pub fn insert(&mut self, sd: StructDef) {
        let sd = Arc::new(sd);
        let base_url = format!("http://hl7.org/fhir/StructureDefinition/{}", sd.type_name);
        if sd.url == base_url {
            self.by_type.insert(sd.type_name.clone(), sd.clone());
        }
        if let Some(v) = &sd.version {
            self.by_url.insert(format!("{}|{v}", sd.url), sd.clone());
        }
        self.by_url.insert(sd.url.clone(), sd);
    }

    /// A definition by canonical URL, `url|version` or plain url.
    pub fn by_canonical(&self, url: &str) -> Option<&Arc<StructDef>> {
        self.by_url.get(url).or_else(|| self.by_url.get(url.split('|').next().unwrap_or(url)))
    }

    pub fn type_def(&self, name: &str) -> Option<&Arc<StructDef>> {
        self.by_type.get(name)
    }

    pub fn is_resource_type(&self, name: &str) -> bool {
        self.by_type.get(name).is_some_and(|sd| sd.kind == "resource" && !sd.is_abstract)
    }

    pub fn is_primitive(&self, code: &str) -> bool {
        code.starts_with("http://hl7.org/fhirpath/System.")
            || self.by_type.get(code).is_some_and(|sd| sd.kind == "primitive-type")
    }
}
