//! Compact FHIR type model built from the core package's StructureDefinitions.
//!
//! Only what the engine needs is kept: per type, element name -> (types, is_array, choice
//! keys), the base type chain, and backbone element types (keyed by their element path, e.g.
//! `Patient.contact`); `contentReference` elements point to the referenced backbone type.
//! Loading reads only the specialization StructureDefinitions listed in `.index.json` with a
//! streaming deserializer that skips everything else (two threads).

use super::FhirPathError;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use rustc_hash::FxHashMap as HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub(crate) type TypeId = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeKind {
    Primitive,
    Complex,
    Resource,
    Backbone,
}

#[derive(Debug, Clone)]
pub(crate) struct ElemDef {
    /// (JSON property name, type). One entry unless the element is a choice (`value[x]`).
    pub choices: Vec<(String, TypeId)>,
    pub is_array: bool,
    pub is_choice: bool,
}

/// Public view of an element definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementInfo<'m> {
    /// (JSON property name, type key) pairs; several for choice elements. Backbone elements
    /// have their element path (e.g. `Patient.contact`) as type key.
    pub types: Vec<(&'m str, &'m str)>,
    /// Max cardinality > 1.
    pub is_array: bool,
    /// A `[x]` choice element.
    pub is_choice: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct TypeDef {
    /// Key name: `Patient`, `HumanName`, `string`, or an element path for backbone types.
    pub name: String,
    /// FHIRPath type name (`BackboneElement` / `Element` for backbone types).
    pub label: String,
    pub kind: TypeKind,
    pub base: Option<TypeId>,
    pub elements: HashMap<String, ElemDef>,
}

/// FHIR type information used for navigation and typing. Build once, share via `Arc`.
#[derive(Debug, Default, Clone)]
pub struct ModelInfo {
    types: Vec<TypeDef>,
    by_name: HashMap<String, TypeId>,
}

impl ModelInfo {
    /// A model with no type information: the engine then infers types from the JSON shape.
    pub fn empty() -> ModelInfo {
        ModelInfo::default()
    }

    /// True when no StructureDefinitions were loaded.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// Number of types (including backbone element types).
    pub fn type_count(&self) -> usize {
        self.types.len()
    }

    /// Whether a (non-backbone) FHIR type of this name is known.
    pub fn has_type(&self, name: &str) -> bool {
        self.by_name.get(name).map(|&id| self.types[id as usize].kind != TypeKind::Backbone).unwrap_or(false)
    }

    /// Default package location: `$CAREBRIDGE_PACKAGE_CACHE` or `$HOME/.fhir/packages`, then
    /// `hl7.fhir.r4.core#4.0.1/package`.
    pub fn default_package_dir() -> PathBuf {
        let base = std::env::var_os("CAREBRIDGE_PACKAGE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".fhir").join("packages"));
        base.join("hl7.fhir.r4.core#4.0.1").join("package")
    }

    /// Loads from a package folder (`.../hl7.fhir.r4.core#4.0.1/package`, or its parent).
    pub fn load_from_package(dir: impl AsRef<Path>) -> Result<ModelInfo, FhirPathError> {
        let mut dir = dir.as_ref().to_path_buf();
        if !dir.join(".index.json").exists() && dir.join("package").join(".index.json").exists() {
            dir = dir.join("package");
        }
        let files = list_specializations(&dir)?;
        if files.is_empty() {
            return Err(FhirPathError::Model(format!("no StructureDefinitions found in {}", dir.display())));
        }
        let mid = files.len() / 2;
        let (a, b) = files.split_at(mid);
        let (ra, rb) = std::thread::scope(|s| {
            let h = s.spawn(|| read_sds(&dir, a));
            let rb = read_sds(&dir, b);
            (h.join().unwrap_or_else(|_| Err(FhirPathError::Model("loader thread panicked".into()))), rb)
        });
        let mut sds = ra?;
        sds.extend(rb?);
        Ok(build(sds))
    }

    /// Element information for `type_name` (a type such as `HumanName` or a backbone element
    /// path such as `Patient.contact`) and element `name` (`value` for `value[x]`).
    pub fn element_info(&self, type_name: &str, name: &str) -> Option<ElementInfo<'_>> {
        let id = self.type_id(type_name)?;
        let e = self.element(id, name)?;
        Some(ElementInfo {
            types: e.choices.iter().map(|(k, t)| (k.as_str(), self.types[*t as usize].name.as_str())).collect(),
            is_array: e.is_array,
            is_choice: e.is_choice,
        })
    }

    /// The base type of a type (`Patient` -> `DomainResource`), if any.
    pub fn base_type(&self, type_name: &str) -> Option<&str> {
        let id = self.type_id(type_name)?;
        self.types[id as usize].base.map(|b| self.types[b as usize].name.as_str())
    }

    pub(crate) fn type_id(&self, name: &str) -> Option<TypeId> {
        self.by_name.get(name).copied()
    }

    pub(crate) fn def(&self, id: TypeId) -> &TypeDef {
        &self.types[id as usize]
    }

    pub(crate) fn label(&self, id: TypeId) -> &str {
        &self.types[id as usize].label
    }

    pub(crate) fn element(&self, id: TypeId, name: &str) -> Option<&ElemDef> {
        self.types.get(id as usize)?.elements.get(name)
    }

    /// Whether `id` is `name` or derives from it.
    pub(crate) fn is_a(&self, id: TypeId, name: &str) -> bool {
        let mut cur = Some(id);
        let mut guard = 0;
        while let Some(c) = cur {
            let t = &self.types[c as usize];
            if t.label == name || t.name == name {
                return true;
            }
            cur = t.base;
            guard += 1;
            if guard > 32 {
                break;
            }
        }
        false
    }

    pub(crate) fn kind(&self, id: TypeId) -> TypeKind {
        self.types[id as usize].kind
    }
}

// ---------------------------------------------------------------- raw deserialization

#[derive(Default, Debug)]
struct RawType {
    code: String,
    fhir_type: Option<String>,
}

#[derive(Default, Debug)]
struct RawElem {
    path: String,
    max: Option<String>,
    content_ref: Option<String>,
    types: Vec<RawType>,
}

#[derive(Default, Debug)]
struct RawSd {
    ty: String,
    kind: String,
    base: Option<String>,
    derivation: Option<String>,
    elements: Vec<RawElem>,
}

#[derive(Default, Debug)]
struct IndexEntry {
    filename: String,
    resource_type: String,
    kind: String,
    url: String,
    ty: String,
}

enum Key {
    ResourceType,
    Kind,
    Type,
    BaseDefinition,
    Derivation,
    Snapshot,
    Element,
    Path,
    Max,
    ContentReference,
    Code,
    Extension,
    Url,
    ValueUrl,
    Files,
    Filename,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct KV;
        impl<'de> Visitor<'de> for KV {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "resourceType" => Key::ResourceType,
                    "kind" => Key::Kind,
                    "type" => Key::Type,
                    "baseDefinition" => Key::BaseDefinition,
                    "derivation" => Key::Derivation,
                    "snapshot" => Key::Snapshot,
                    "element" => Key::Element,
                    "path" => Key::Path,
                    "max" => Key::Max,
                    "contentReference" => Key::ContentReference,
                    "code" => Key::Code,
                    "extension" => Key::Extension,
                    "url" => Key::Url,
                    "valueUrl" => Key::ValueUrl,
                    "files" => Key::Files,
                    "filename" => Key::Filename,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(KV)
    }
}

macro_rules! map_visitor {
    ($ty:ty, $name:expr, |$m:ident, $out:ident| $body:block) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($name)
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut $m: A) -> Result<$ty, A::Error> {
                        let mut $out = <$ty>::default();
                        $body
                        Ok($out)
                    }
                }
                d.deserialize_map(V)
            }
        }
    };
}

#[derive(Default)]
struct Ext {
    url: String,
    value_url: Option<String>,
}

map_visitor!(Ext, "extension", |m, out| {
    while let Some(k) = m.next_key::<Key>()? {
        match k {
            Key::Url => out.url = m.next_value()?,
            Key::ValueUrl => out.value_url = Some(m.next_value()?),
            _ => {
                m.next_value::<IgnoredAny>()?;
            }
        }
    }
});

map_visitor!(RawType, "type", |m, out| {
    while let Some(k) = m.next_key::<Key>()? {
        match k {
            Key::Code => out.code = m.next_value()?,
            Key::Extension => {
                let exts: Vec<Ext> = m.next_value()?;
                for e in exts {
                    if e.url == "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type" {
                        out.fhir_type = e.value_url;
                    }
                }
            }
            _ => {
                m.next_value::<IgnoredAny>()?;
            }
        }
    }
});

map_visitor!(RawElem, "element", |m, out| {
    while let Some(k) = m.next_key::<Key>()? {
        match k {
            Key::Path => out.path = m.next_value()?,
            Key::Max => out.max = Some(m.next_value()?),
            Key::ContentReference => out.content_ref = Some(m.next_value()?),
            Key::Type => out.types = m.next_value()?,
            _ => {
                m.next_value::<IgnoredAny>()?;
            }
        }
    }
});

#[derive(Default)]
struct Snapshot {
    element: Vec<RawElem>,
}
map_visitor!(Snapshot, "snapshot", |m, out| {
    while let Some(k) = m.next_key::<Key>()? {
        match k {
            Key::Element => out.element = m.next_value()?,
            _ => {
                m.next_value::<IgnoredAny>()?;
            }
        }
    }
});

map_visitor!(RawSd, "StructureDefinition", |m, out| {
    while let Some(k) = m.next_key::<Key>()? {
        match k {
            Key::Type => out.ty = m.next_value()?,
            Key::Kind => out.kind = m.next_value()?,
            Key::BaseDefinition => out.base = Some(m.next_value()?),
            Key::Derivation => out.derivation = Some(m.next_value()?),
            Key::Snapshot => out.elements = m.next_value::<Snapshot>()?.element,
            _ => {
                m.next_value::<IgnoredAny>()?;
            }
        }
    }
});

map_visitor!(IndexEntry, "index entry", |m, out| {
    while let Some(k) = m.next_key::<Key>()? {
        match k {
            Key::Filename => out.filename = m.next_value()?,
            Key::ResourceType => out.resource_type = m.next_value()?,
            Key::Kind => out.kind = m.next_value::<Option<String>>()?.unwrap_or_default(),
            Key::Url => out.url = m.next_value::<Option<String>>()?.unwrap_or_default(),
            Key::Type => out.ty = m.next_value::<Option<String>>()?.unwrap_or_default(),
            _ => {
                m.next_value::<IgnoredAny>()?;
            }
        }
    }
});

#[derive(Default)]
struct Index {
    files: Vec<IndexEntry>,
}
map_visitor!(Index, "index", |m, out| {
    while let Some(k) = m.next_key::<Key>()? {
        match k {
            Key::Files => out.files = m.next_value()?,
            _ => {
                m.next_value::<IgnoredAny>()?;
            }
        }
    }
});

fn list_specializations(dir: &Path) -> Result<Vec<String>, FhirPathError> {
    let idx_path = dir.join(".index.json");
    if let Ok(bytes) = std::fs::read(&idx_path) {
        let idx: Index = serde_json::from_slice(&bytes)
            .map_err(|e| FhirPathError::Model(format!("{}: {}", idx_path.display(), e)))?;
        return Ok(idx
            .files
            .into_iter()
            .filter(|f| {
                f.resource_type == "StructureDefinition"
                    && f.kind != "logical"
                    && !f.ty.is_empty()
                    && f.url == format!("http://hl7.org/fhir/StructureDefinition/{}", f.ty)
            })
            .map(|f| f.filename)
            .collect());
    }
    // no index: every StructureDefinition file (filtered after reading)
    let rd = std::fs::read_dir(dir).map_err(|e| FhirPathError::Model(format!("{}: {}", dir.display(), e)))?;
    let mut v = Vec::new();
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        if n.starts_with("StructureDefinition-") && n.ends_with(".json") {
            v.push(n);
        }
    }
    v.sort();
    Ok(v)
}

fn read_sds(dir: &Path, files: &[String]) -> Result<Vec<RawSd>, FhirPathError> {
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let p = dir.join(f);
        let bytes = std::fs::read(&p).map_err(|e| FhirPathError::Model(format!("{}: {}", p.display(), e)))?;
        let sd: RawSd = serde_json::from_slice(&bytes).map_err(|e| FhirPathError::Model(format!("{}: {}", p.display(), e)))?;
        if sd.derivation.as_deref() == Some("constraint") || sd.kind == "logical" || sd.ty.is_empty() {
            continue;
        }
        out.push(sd);
    }
    Ok(out)
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

struct Builder {
    types: Vec<TypeDef>,
    by_name: HashMap<String, TypeId>,
}

impl Builder {
    fn get_or_add(&mut self, name: &str, label: &str, kind: TypeKind) -> TypeId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let id = self.types.len() as TypeId;
        self.types.push(TypeDef { name: name.to_string(), label: label.to_string(), kind, base: None, elements: HashMap::default() });
        self.by_name.insert(name.to_string(), id);
        id
    }
}

fn build(sds: Vec<RawSd>) -> ModelInfo {
    let mut b = Builder { types: Vec::new(), by_name: HashMap::default() };
    // pass 1: declare all named types
    for sd in &sds {
        let kind = match sd.kind.as_str() {
            "primitive-type" => TypeKind::Primitive,
            "resource" => TypeKind::Resource,
            _ => TypeKind::Complex,
        };
        let id = b.get_or_add(&sd.ty, &sd.ty, kind);
        b.types[id as usize].kind = kind;
    }
    // bases
    for sd in &sds {
        if let Some(base) = &sd.base {
            let bname = base.rsplit('/').next().unwrap_or("");
            if let (Some(&id), Some(&bid)) = (b.by_name.get(&sd.ty), b.by_name.get(bname)) {
                if id != bid {
                    b.types[id as usize].base = Some(bid);
                }
            }
        }
    }
    let backbone_base = b.by_name.get("BackboneElement").copied();
    let element_base = b.by_name.get("Element").copied();
    let mut pending_refs: Vec<(TypeId, String, String)> = Vec::new();
    // pass 2: elements
    for sd in &sds {
        let root = sd.ty.as_str();
        let is_prim = sd.kind == "primitive-type";
        let is_resource = sd.kind == "resource";
        let root_id = b.by_name[root];
        // paths with children
        let mut parents: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for e in &sd.elements {
            if let Some(i) = e.path.rfind('.') {
                parents.insert(&e.path[..i]);
            }
        }
        for e in &sd.elements {
            let Some(dot) = e.path.rfind('.') else { continue };
            let parent = &e.path[..dot];
            let raw_name = &e.path[dot + 1..];
            if is_prim && raw_name == "value" && parent == root {
                continue;
            }
            let owner = if parent == root {
                root_id
            } else {
                match b.by_name.get(parent) {
                    Some(&id) => id,
                    None => continue,
                }
            };
            let is_array = !matches!(e.max.as_deref(), Some("1") | Some("0"));
            let (name, is_choice) = match raw_name.strip_suffix("[x]") {
                Some(n) => (n.to_string(), true),
                None => (raw_name.to_string(), false),
            };
            if let Some(cr) = &e.content_ref {
                let target = cr.trim_start_matches('#').to_string();
                pending_refs.push((owner, name, target));
                b.types[owner as usize].elements.insert(
                    raw_name.trim_end_matches("[x]").to_string(),
                    ElemDef { choices: Vec::new(), is_array, is_choice: false },
                );
                continue;
            }
            let mut choices = Vec::new();
            if parents.contains(e.path.as_str()) {
                // backbone element type keyed by path
                let label = e.types.first().map(|t| t.code.as_str()).unwrap_or("BackboneElement");
                let label = if label == "Element" { "Element" } else { "BackboneElement" };
                let id = b.get_or_add(&e.path, label, TypeKind::Backbone);
                b.types[id as usize].base = if label == "Element" { element_base } else { backbone_base };
                choices.push((name.clone(), id));
            } else {
                for t in &e.types {
                    let mut code = t.code.as_str();
                    if let Some(sys) = code.strip_prefix("http://hl7.org/fhirpath/System.") {
                        code = match t.fhir_type.as_deref() {
                            Some(ft) => ft,
                            None => match sys {
                                "String" => "string",
                                "Boolean" => "boolean",
                                "Integer" => "integer",
                                "Decimal" => "decimal",
                                "Date" => "date",
                                "DateTime" => "dateTime",
                                "Time" => "time",
                                _ => "string",
                            },
                        };
                    }
                    if is_resource && parent == root && name == "id" {
                        code = "id";
                    }
                    let tid = match b.by_name.get(code) {
                        Some(&id) => id,
                        None => b.get_or_add(code, code, TypeKind::Complex),
                    };
                    let key = if is_choice { format!("{}{}", name, upper_first(code)) } else { name.clone() };
                    choices.push((key, tid));
                }
            }
            b.types[owner as usize].elements.insert(name, ElemDef { choices, is_array, is_choice });
        }
    }
    for (owner, name, target) in pending_refs {
        if let Some(&tid) = b.by_name.get(&target) {
            if let Some(el) = b.types[owner as usize].elements.get_mut(&name) {
                el.choices = vec![(name.clone(), tid)];
            }
        }
    }
    ModelInfo { types: b.types, by_name: b.by_name }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_core_if_present() {
        let dir = ModelInfo::default_package_dir();
        if !dir.join(".index.json").exists() {
            eprintln!("skip: no package at {}", dir.display());
            return;
        }
        let t = std::time::Instant::now();
        let m = ModelInfo::load_from_package(&dir).unwrap();
        eprintln!("model load {:?}, {} types", t.elapsed(), m.type_count());
        let obs = m.type_id("Observation").unwrap();
        let v = m.element(obs, "value").unwrap();
        assert!(v.is_choice);
        assert!(v.choices.iter().any(|(k, _)| k == "valueQuantity"));
        let q = m.type_id("Questionnaire.item").unwrap();
        let item = m.element(q, "item").unwrap();
        assert_eq!(item.choices[0].1, q);
        let code = m.type_id("code").unwrap();
        assert!(m.is_a(code, "string"));
        let pat = m.type_id("Patient").unwrap();
        assert!(m.is_a(pat, "DomainResource"));
        assert_eq!(m.label(m.element(pat, "id").unwrap().choices[0].1), "id");
    }
}
