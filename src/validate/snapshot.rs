//! Snapshot generation: a profile's differential applied to its base
//! definition's snapshot gives the profile's snapshot (FHIR R4
//! `profiling.html` §"Differentials and snapshots", `structuredefinition.html`
//! §"Snapshot generation" and the element rules of `elementdefinition.html`).
//! Pure: JSON in, JSON out; definitions it needs (datatypes, type profiles)
//! come through a resolver.
//!
//! Rules implemented (the spec leaves the rest to the HL7 Java
//! `ProfileUtilities`, whose published output is our oracle — see the IPS
//! comparison test in `tests/it/profiles.rs`):
//! - element identity by `ElementDefinition.id` (`Patient.identifier:kvnr.system`),
//!   or, for differentials written without ids, by `path` + `sliceName` with
//!   children following the last slice of their parent path;
//! - every base element is inherited in order; a differential element
//!   constrains the matching element: `min`/`max` may only narrow (min ≥ base
//!   min outside slices, max ≤ base max), `type` may only restrict to base
//!   types (or a resource type for `Resource`), `constraint`s are added to the
//!   inherited ones (with `source` set to the profile), `binding`, `fixed[x]`,
//!   `pattern[x]`, `slicing` and documentation replace;
//! - children of a complex datatype are unrolled only when the differential
//!   reaches into them, from the element's type profile when it has one
//!   (type profiles), else from the datatype definition; a `contentReference`
//!   unrolls from the referenced element;
//! - a new slice starts from the sliced element as the base had it (not as
//!   this differential changed it) and is placed after the sliced element's
//!   children and earlier slices; its children unroll only when constrained,
//!   inline (backbone) children as the differential has constrained them so far;
//!   slicing an element needs a `slicing` (extensions are implicitly sliced by
//!   `url`); `name:slice/reslice` reslices;
//! - choice types: `value[x]:valueQuantity` is a type slice; a path such as
//!   `Observation.valueQuantity` constrains `value[x]` to that one type.
//!
//! Broken input (unknown element, widened cardinality, a type the base does
//! not allow, a type that cannot be resolved) is an `Err` naming the element.

use serde_json::{Map, Value};
use std::sync::Arc;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SnapshotError {
    #[error("{0}: not a StructureDefinition with a differential ({1})")]
    Malformed(String, String),
    #[error("element {element}: {message}")]
    Element { element: String, message: String },
}

fn err(element: &str, message: impl Into<String>) -> SnapshotError {
    SnapshotError::Element { element: element.to_owned(), message: message.into() }
}

/// Where generation finds other definitions' snapshot elements: datatypes
/// (`http://hl7.org/fhir/StructureDefinition/Identifier`) and type profiles.
/// URLs arrive without `|version`.
pub trait Resolver {
    fn snapshot_elements(&self, url: &str) -> Option<Arc<Vec<Value>>>;
}

const CORE: &str = "http://hl7.org/fhir/StructureDefinition/";

/// The canonical URL without a `|version` suffix.
pub fn unversioned(url: &str) -> &str {
    url.split('|').next().unwrap_or(url)
}

struct Node {
    elem: Map<String, Value>,
    /// the element as the base had it (before this differential)
    base: Map<String, Value>,
    /// None: not unrolled yet (a datatype or content reference)
    children: Option<Vec<usize>>,
    slices: Vec<usize>,
    /// the element this slice was cut from (its pristine subtree is the slice's)
    slice_of: Option<usize>,
    /// children present in the base snapshot, in their pristine form
    base_children: Vec<usize>,
    /// part of the base (not a slice this differential added)
    inherited: bool,
}

struct Tree<'r> {
    nodes: Vec<Node>,
    resolver: &'r dyn Resolver,
    url: String,
    /// the base snapshot (for content references)
    base_elems: Vec<Value>,
}

fn s<'a>(m: &'a Map<String, Value>, k: &str) -> &'a str {
    m.get(k).and_then(Value::as_str).unwrap_or("")
}

/// Split an element id into segments `(name, slice)`; slice names may hold `/` but not `.`.
fn segments(id: &str) -> Vec<(String, Option<String>)> {
    id.split('.')
        .map(|seg| match seg.split_once(':') {
            Some((n, sl)) => (n.to_owned(), Some(sl.to_owned())),
            None => (seg.to_owned(), None),
        })
        .collect()
}

/// Rewrite an element id/path: `Identifier.system` under `Patient.identifier:kvnr` (path `Patient.identifier`).
fn reroot(elem: &Map<String, Value>, new_id_prefix: &str, new_path_prefix: &str) -> Map<String, Value> {
    let mut e = elem.clone();
    let id = s(elem, "id").to_owned();
    let id = if id.is_empty() { s(elem, "path").to_owned() } else { id };
    let rest = id.split_once('.').map(|(_, r)| r).unwrap_or("");
    let path_rest: Vec<&str> = rest.split('.').filter(|x| !x.is_empty()).map(|seg| seg.split(':').next().unwrap_or(seg)).collect();
    let (nid, npath) = if rest.is_empty() {
        (new_id_prefix.to_owned(), new_path_prefix.to_owned())
    } else {
        (format!("{new_id_prefix}.{rest}"), format!("{new_path_prefix}.{}", path_rest.join(".")))
    };
    e.insert("id".into(), Value::String(nid));
    e.insert("path".into(), Value::String(npath));
    e
}

fn parse_max(v: Option<&Value>) -> Option<u64> {
    match v.and_then(Value::as_str) {
        Some("*") | None => None,
        Some(n) => Some(n.parse().unwrap_or(u64::MAX)),
    }
}

impl<'r> Tree<'r> {
    fn push(&mut self, elem: Map<String, Value>, inherited: bool) -> usize {
        self.nodes.push(Node { base: elem.clone(), elem, children: None, slices: vec![], slice_of: None, base_children: vec![], inherited });
        self.nodes.len() - 1
    }

    /// Build the tree from a flat snapshot (ids give parents and slices).
    fn from_snapshot(elems: &[Value], resolver: &'r dyn Resolver, url: &str) -> Result<Tree<'r>, SnapshotError> {
        let mut t = Tree { nodes: vec![], resolver, url: url.to_owned(), base_elems: elems.to_vec() };
        let mut by_id: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for e in elems {
            let Some(m) = e.as_object() else { return Err(err("?", "base snapshot element is not an object")) };
            let mut m = m.clone();
            let id = match s(&m, "id") {
                "" => s(&m, "path").to_owned(),
                x => x.to_owned(),
            };
            m.insert("id".into(), Value::String(id.clone()));
            let i = t.push(m, true);
            if by_id.is_empty() {
                by_id.insert(id, i);
                continue;
            }
            // last segment: `name:slice` is a slice of `…name`; else a child of the prefix
            let (head, last) = id.rsplit_once('.').map(|(h, l)| (h.to_owned(), l.to_owned())).unwrap_or_default();
            if let Some((name, _)) = last.split_once(':') {
                let sliced = if head.is_empty() { name.to_owned() } else { format!("{head}.{name}") };
                // reslices `a:b/c` belong to slice `a:b`
                let sliced = match last.rsplit_once('/') {
                    Some((parent_slice, _)) => format!("{}{}", if head.is_empty() { String::new() } else { format!("{head}.") }, parent_slice),
                    None => sliced,
                };
                let p = *by_id.get(&sliced).ok_or_else(|| err(&id, format!("slice of unknown element {sliced} in the base snapshot")))?;
                t.nodes[p].slices.push(i);
                t.nodes[i].slice_of = Some(p);
            } else {
                let p = *by_id.get(&head).ok_or_else(|| err(&id, format!("parent {head} missing in the base snapshot")))?;
                t.nodes[p].children.get_or_insert_with(Vec::new).push(i);
                t.nodes[p].base_children.push(i);
            }
            by_id.insert(id, i);
        }
        if t.nodes.is_empty() {
            return Err(err(url, "base snapshot is empty"));
        }
        Ok(t)
    }

    fn flatten(&self, i: usize, out: &mut Vec<Value>) {
        let n = &self.nodes[i];
        out.push(Value::Object(n.elem.clone()));
        for &c in n.children.iter().flatten() {
            self.flatten(c, out);
        }
        for &sl in &n.slices {
            self.flatten(sl, out);
        }
    }

    /// Deep copy of a subtree under new id/path prefixes, each element as
    /// constrained so far; slices this differential added are not copied.
    fn clone_subtree(&mut self, src: usize, id: &str, path: &str) -> usize {
        let mut elem = self.nodes[src].elem.clone();
        elem.insert("id".into(), Value::String(id.to_owned()));
        elem.insert("path".into(), Value::String(path.to_owned()));
        let n = self.push(elem, true);
        let kids: Vec<usize> = self.nodes[src].children.clone().unwrap_or_default();
        if !kids.is_empty() {
            let mut out = vec![];
            for k in kids {
                let name = s(&self.nodes[k].base, "path").rsplit('.').next().unwrap_or("").to_owned();
                let c = self.clone_subtree(k, &format!("{id}.{name}"), &format!("{path}.{name}"));
                out.push(c);
            }
            self.nodes[n].children = Some(out.clone());
            self.nodes[n].base_children = out;
        }
        let slices: Vec<usize> = self.nodes[src].slices.iter().copied().filter(|&x| self.nodes[x].inherited).collect();
        for sl in slices {
            let sname = s(&self.nodes[sl].base, "sliceName").to_owned();
            let c = self.clone_subtree(sl, &format!("{id}:{sname}"), path);
            self.nodes[c].slice_of = Some(n);
            self.nodes[n].slices.push(c);
        }
        n
    }

    /// Make sure node `i` has its children (unroll datatype / type profile / content reference).
    fn unroll(&mut self, i: usize) -> Result<(), SnapshotError> {
        if self.nodes[i].children.is_some() {
            return Ok(());
        }
        let id = s(&self.nodes[i].elem, "id").to_owned();
        let path = s(&self.nodes[i].elem, "path").to_owned();
        // a slice of an element with inline (backbone) children: the sliced
        // element's children as constrained so far (what the Java tooling does)
        if let Some(src) = self.nodes[i].slice_of {
            if !self.nodes[src].base_children.is_empty() && self.nodes[i].elem.get("contentReference").is_none() {
                let kids = self.nodes[src].children.clone().unwrap_or_default();
                let mut out = vec![];
                for k in kids {
                    let name = s(&self.nodes[k].base, "path").rsplit('.').next().unwrap_or("").to_owned();
                    out.push(self.clone_subtree(k, &format!("{id}.{name}"), &format!("{path}.{name}")));
                }
                self.nodes[i].children = Some(out);
                return Ok(());
            }
        }
        if let Some(cref) = self.nodes[i].elem.get("contentReference").and_then(Value::as_str).map(str::to_owned) {
            let target = cref.split('#').nth(1).unwrap_or(&cref).to_owned();
            let start = self
                .base_elems
                .iter()
                .position(|e| e.get("id").and_then(Value::as_str) == Some(&target) || e.get("path").and_then(Value::as_str) == Some(&target))
                .ok_or_else(|| err(&id, format!("content reference {cref} not found")))?;
            let prefix = format!("{target}.");
            let sub: Vec<Map<String, Value>> = self.base_elems[start + 1..]
                .iter()
                .filter_map(Value::as_object)
                .filter(|e| s(e, "id").starts_with(&prefix))
                .cloned()
                .collect();
            let target_len = target.len();
            let mut rerooted = vec![];
            for e in sub {
                let rest = &s(&e, "id")[target_len..];
                let mut e = e.clone();
                e.insert("id".into(), Value::String(format!("X{rest}")));
                rerooted.push(e);
            }
            self.graft(i, &rerooted)?;
            // the element now has its own children: it is a backbone element
            let n = &mut self.nodes[i].elem;
            n.remove("contentReference");
            n.insert("type".into(), serde_json::json!([{ "code": "BackboneElement" }]));
            return Ok(());
        }
        let types = self.nodes[i].elem.get("type").and_then(Value::as_array).cloned().unwrap_or_default();
        if types.len() != 1 {
            return Err(err(&id, format!("cannot constrain inside an element with {} types; slice it by type first", types.len())));
        }
        let t = &types[0];
        let code = t.get("code").and_then(Value::as_str).unwrap_or("");
        let profile = t.get("profile").and_then(Value::as_array).and_then(|p| p.first()).and_then(Value::as_str);
        let url = match profile {
            Some(p) => unversioned(p).to_owned(),
            None if code.contains(':') => code.to_owned(),
            None => format!("{CORE}{code}"),
        };
        let elems = self.resolver.snapshot_elements(&url).ok_or_else(|| err(&id, format!("type definition {url} not found")))?;
        let elems: Vec<Map<String, Value>> = elems.iter().skip(1).filter_map(Value::as_object).cloned().collect();
        self.graft(i, &elems)
    }

    /// Attach a definition's elements (root excluded, ids `Type.child…`) under node `i`.
    fn graft(&mut self, i: usize, elems: &[Map<String, Value>]) -> Result<(), SnapshotError> {
        let id = s(&self.nodes[i].elem, "id").to_owned();
        let path = s(&self.nodes[i].elem, "path").to_owned();
        let mut by_id: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        by_id.insert(id.clone(), i);
        self.nodes[i].children = Some(vec![]);
        for e in elems {
            let m = reroot(e, &id, &path);
            let nid = s(&m, "id").to_owned();
            let n = self.push(m, true);
            let (head, last) = nid.rsplit_once('.').map(|(h, l)| (h.to_owned(), l.to_owned())).unwrap_or_default();
            if let Some((name, _)) = last.split_once(':') {
                let sliced = match last.rsplit_once('/') {
                    Some((ps, _)) => format!("{head}.{ps}"),
                    None => format!("{head}.{name}"),
                };
                let p = *by_id.get(&sliced).ok_or_else(|| err(&nid, "slice of an unknown element in a type definition"))?;
                self.nodes[p].slices.push(n);
                self.nodes[n].slice_of = Some(p);
            } else {
                let p = *by_id.get(&head).ok_or_else(|| err(&nid, "parent missing in a type definition"))?;
                self.nodes[p].children.get_or_insert_with(Vec::new).push(n);
                self.nodes[p].base_children.push(n);
            }
            by_id.insert(nid, n);
        }
        Ok(())
    }

    /// Find (unrolling as needed) the child of `p` named `name` (a path segment).
    fn child(&mut self, p: usize, name: &str, diff_id: &str) -> Result<(usize, Option<String>), SnapshotError> {
        self.unroll(p).map_err(|e| match e {
            SnapshotError::Element { message, .. } => err(diff_id, message),
            x => x,
        })?;
        let kids = self.nodes[p].children.clone().unwrap_or_default();
        let last = |n: &Node| s(&n.elem, "path").rsplit('.').next().unwrap_or("").to_owned();
        if let Some(&c) = kids.iter().find(|&&c| last(&self.nodes[c]) == name) {
            return Ok((c, None));
        }
        // `valueQuantity` for `value[x]`: the choice element restricted to one type
        for &c in &kids {
            let l = last(&self.nodes[c]);
            if let Some(stem) = l.strip_suffix("[x]") {
                if let Some(tname) = name.strip_prefix(stem) {
                    let types = self.nodes[c].elem.get("type").and_then(Value::as_array).cloned().unwrap_or_default();
                    if let Some(t) = types.iter().find(|t| t.get("code").and_then(Value::as_str).is_some_and(|code| code.eq_ignore_ascii_case(tname))) {
                        let code = t["code"].as_str().unwrap_or_default().to_owned();
                        return Ok((c, Some(code)));
                    }
                }
            }
        }
        Err(err(diff_id, format!("no element '{name}' under {} in the base", s(&self.nodes[p].elem, "id"))))
    }

    /// Find or create slice `slice` (may be `a/b`) of node `p`.
    fn slice(&mut self, p: usize, slice: &str, diff: &Map<String, Value>, diff_id: &str) -> Result<usize, SnapshotError> {
        let (owner, name) = match slice.rsplit_once('/') {
            Some((parent, _)) => (self.slice(p, parent, &Map::new(), diff_id)?, slice),
            None => (p, slice),
        };
        if let Some(&sl) = self.nodes[owner].slices.iter().find(|&&x| s(&self.nodes[x].elem, "sliceName") == name) {
            return Ok(sl);
        }
        // slicing must be defined on the sliced element (here or in the base); extensions implicitly
        let owner_path = s(&self.nodes[owner].elem, "path").to_owned();
        if self.nodes[owner].elem.get("slicing").is_none() && !diff.contains_key("slicing") {
            let is_ext = owner_path.ends_with(".extension") || owner_path.ends_with(".modifierExtension");
            let is_choice = owner_path.ends_with("[x]");
            if is_ext {
                self.nodes[owner].elem.insert("slicing".into(), serde_json::json!({"discriminator": [{"type": "value", "path": "url"}], "rules": "open"}));
            } else if is_choice {
                self.nodes[owner].elem.insert("slicing".into(), serde_json::json!({"discriminator": [{"type": "type", "path": "$this"}], "rules": "open"}));
            } else if slice.contains('/') && self.nodes[owner].slice_of.is_some() {
                // reslicing inherits the slicing of the sliced element
            } else {
                return Err(err(diff_id, format!("slice '{name}' of {owner_path}, which has no slicing")));
            }
        }
        let oid = s(&self.nodes[owner].elem, "id").to_owned();
        // the slice starts from the base form of the sliced element
        let src = if slice.contains('/') { owner } else { p };
        let mut elem = self.nodes[src].base.clone();
        elem.remove("slicing");
        elem.insert("id".into(), Value::String(format!("{oid}:{}", name.rsplit('/').next().unwrap_or(name))));
        if slice.contains('/') {
            elem.insert("id".into(), Value::String(format!("{}:{name}", oid.rsplit_once(':').map(|x| x.0).unwrap_or(&oid))));
        }
        elem.insert("sliceName".into(), Value::String(name.to_owned()));
        let n = self.push(elem, false);
        self.nodes[n].base = self.nodes[n].elem.clone();
        self.nodes[n].slice_of = Some(src);
        self.nodes[owner].slices.push(n);
        Ok(n)
    }

    /// Apply a differential element to node `i`.
    fn merge(&mut self, i: usize, d: &Map<String, Value>, only_type: Option<String>, diff_id: &str) -> Result<(), SnapshotError> {
        let url = self.url.clone();
        let base = self.nodes[i].elem.clone();
        let is_slice = base.contains_key("sliceName");
        let e = &mut self.nodes[i].elem;
        if let Some(code) = only_type {
            if let Some(ts) = e.get_mut("type").and_then(Value::as_array_mut) {
                ts.retain(|t| t.get("code").and_then(Value::as_str) == Some(code.as_str()));
            }
        }
        for (k, v) in d {
            match k.as_str() {
                "id" | "path" | "sliceName" => {}
                "min" => {
                    let new = v.as_u64().ok_or_else(|| err(diff_id, "min is not a number"))?;
                    let old = base.get("min").and_then(Value::as_u64).unwrap_or(0);
                    if new < old && !is_slice {
                        return Err(err(diff_id, format!("min {new} is below the base's min {old}")));
                    }
                    if let Some(m) = parse_max(d.get("max").or(base.get("max"))) {
                        if new > m {
                            return Err(err(diff_id, format!("min {new} exceeds max {m}")));
                        }
                    }
                    e.insert(k.clone(), v.clone());
                }
                "max" => {
                    if v.as_str().is_none() {
                        return Err(err(diff_id, "max is not a string"));
                    }
                    if let Some(bm) = parse_max(base.get("max")) {
                        if parse_max(Some(v)).is_none_or(|m| m > bm) {
                            return Err(err(diff_id, format!("max {} exceeds the base's max {bm}", v.as_str().unwrap_or(""))));
                        }
                    }
                    if parse_max(Some(v)) == Some(u64::MAX) {
                        return Err(err(diff_id, format!("max '{}' is not a number or *", v.as_str().unwrap_or(""))));
                    }
                    e.insert(k.clone(), v.clone());
                }
                "type" => {
                    let base_codes: Vec<String> =
                        base.get("type").and_then(Value::as_array).into_iter().flatten().filter_map(|t| t.get("code").and_then(Value::as_str)).map(str::to_owned).collect();
                    for t in v.as_array().ok_or_else(|| err(diff_id, "type is not an array"))? {
                        let code = t.get("code").and_then(Value::as_str).ok_or_else(|| err(diff_id, "type without code"))?;
                        let ok = base_codes.is_empty()
                            || base_codes.iter().any(|b| b == code || b == "Resource" || b == "DomainResource" || b == "Element" && code == "BackboneElement");
                        if !ok {
                            return Err(err(diff_id, format!("type {code} is not allowed by the base ({})", base_codes.join(", "))));
                        }
                    }
                    e.insert(k.clone(), v.clone());
                }
                "constraint" => {
                    let mut list = e.get("constraint").and_then(Value::as_array).cloned().unwrap_or_default();
                    for c in v.as_array().ok_or_else(|| err(diff_id, "constraint is not an array"))? {
                        let mut c = c.as_object().cloned().ok_or_else(|| err(diff_id, "constraint is not an object"))?;
                        if s(&c, "key").is_empty() {
                            return Err(err(diff_id, "constraint without key"));
                        }
                        if !c.contains_key("source") {
                            c.insert("source".into(), Value::String(url.clone()));
                        }
                        let key = s(&c, "key").to_owned();
                        list.retain(|x| x.get("key").and_then(Value::as_str) != Some(&key));
                        list.push(Value::Object(c));
                    }
                    e.insert(k.clone(), Value::Array(list));
                }
                "condition" | "alias" => {
                    let mut list = e.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
                    for x in v.as_array().into_iter().flatten() {
                        if !list.contains(x) {
                            list.push(x.clone());
                        }
                    }
                    e.insert(k.clone(), Value::Array(list));
                }
                "mapping" => {
                    let mut list = e.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
                    list.extend(v.as_array().into_iter().flatten().cloned());
                    e.insert(k.clone(), Value::Array(list));
                }
                "binding" => {
                    let mut b = v.as_object().cloned().ok_or_else(|| err(diff_id, "binding is not an object"))?;
                    if let Some(old) = base.get("binding").and_then(Value::as_object) {
                        for key in ["strength", "description"] {
                            if !b.contains_key(key) {
                                if let Some(x) = old.get(key) {
                                    b.insert(key.into(), x.clone());
                                }
                            }
                        }
                    }
                    e.insert(k.clone(), Value::Object(b));
                }
                "slicing" => {
                    let mut sl = e.get("slicing").and_then(Value::as_object).cloned().unwrap_or_default();
                    for (sk, sv) in v.as_object().ok_or_else(|| err(diff_id, "slicing is not an object"))? {
                        sl.insert(sk.clone(), sv.clone());
                    }
                    e.insert(k.clone(), Value::Object(sl));
                }
                k2 if k2.starts_with("fixed") || k2.starts_with("pattern") => {
                    e.retain(|x, _| !x.starts_with("fixed") && !x.starts_with("pattern"));
                    e.insert(k.clone(), v.clone());
                }
                _ => {
                    e.insert(k.clone(), v.clone());
                }
            }
        }
        Ok(())
    }
}

/// Generate the snapshot of `sd` (a StructureDefinition with a differential)
/// from `base` (the snapshot elements of its `baseDefinition`). Returns the
/// StructureDefinition with `snapshot.element` filled in.
pub fn generate(sd: &Value, base: &[Value], resolver: &dyn Resolver) -> Result<Value, SnapshotError> {
    let url = sd.get("url").and_then(Value::as_str).unwrap_or("(no url)").to_owned();
    let diff = sd
        .pointer("/differential/element")
        .and_then(Value::as_array)
        .ok_or_else(|| SnapshotError::Malformed(url.clone(), "differential.element missing".into()))?;
    let mut tree = Tree::from_snapshot(base, resolver, &url)?;
    let root_path = s(&tree.nodes[0].elem, "path").to_owned();
    // the ids of the last differential element seen per path (for id-less differentials)
    let mut last_id_for_path: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for (pos, d) in diff.iter().enumerate() {
        let d = d.as_object().ok_or_else(|| SnapshotError::Malformed(url.clone(), format!("differential element {pos} is not an object")))?;
        let path = s(d, "path");
        if path.is_empty() {
            return Err(err(&format!("#{pos}"), "differential element without path"));
        }
        let id = match s(d, "id") {
            "" => {
                let (head, last) = path.rsplit_once('.').unwrap_or(("", path));
                let parent = if head.is_empty() { String::new() } else { last_id_for_path.get(head).cloned().unwrap_or_else(|| head.to_owned()) };
                let mut id = if parent.is_empty() { last.to_owned() } else { format!("{parent}.{last}") };
                if let Some(sn) = d.get("sliceName").and_then(Value::as_str) {
                    id = format!("{id}:{sn}");
                }
                id
            }
            x => x.to_owned(),
        };
        last_id_for_path.insert(path.to_owned(), id.clone());
        let segs = segments(&id);
        if segs[0].0 != root_path {
            return Err(err(&id, format!("does not start with the profiled type {root_path}")));
        }
        if let Some(sn) = d.get("sliceName").and_then(Value::as_str) {
            if segs.last().and_then(|x| x.1.as_deref()) != Some(sn) {
                return Err(err(&id, format!("sliceName '{sn}' does not match the id")));
            }
        }
        let empty = Map::new();
        let mut node = 0;
        let mut only_type = None;
        for (k, (name, slice)) in segs.iter().enumerate() {
            if k > 0 {
                let (c, t) = tree.child(node, name, &id)?;
                node = c;
                only_type = t;
            }
            if let Some(sl) = slice {
                let last = k == segs.len() - 1;
                node = tree.slice(node, sl, if last { d } else { &empty }, &id)?;
                only_type = None;
            }
        }
        tree.merge(node, d, only_type, &id)?;
    }
    let mut out = vec![];
    tree.flatten(0, &mut out);
    let mut sd = sd.clone();
    if let Some(o) = sd.as_object_mut() {
        o.insert("snapshot".into(), serde_json::json!({ "element": out }));
    }
    Ok(sd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Types(Vec<(String, Vec<Value>)>);
    impl Resolver for Types {
        fn snapshot_elements(&self, url: &str) -> Option<Arc<Vec<Value>>> {
            self.0.iter().find(|(u, _)| u == url).map(|(_, e)| Arc::new(e.clone()))
        }
    }

    fn base() -> Vec<Value> {
        vec![
            json!({"id": "Patient", "path": "Patient", "min": 0, "max": "*"}),
            json!({"id": "Patient.identifier", "path": "Patient.identifier", "min": 0, "max": "*", "type": [{"code": "Identifier"}]}),
            json!({"id": "Patient.deceased[x]", "path": "Patient.deceased[x]", "min": 0, "max": "1", "type": [{"code": "boolean"}, {"code": "dateTime"}]}),
            json!({"id": "Patient.contact", "path": "Patient.contact", "min": 0, "max": "*", "type": [{"code": "BackboneElement"}]}),
            json!({"id": "Patient.contact.name", "path": "Patient.contact.name", "min": 0, "max": "1", "type": [{"code": "HumanName"}]}),
        ]
    }

    fn types() -> Types {
        Types(vec![(
            format!("{CORE}Identifier"),
            vec![
                json!({"id": "Identifier", "path": "Identifier", "min": 0, "max": "*"}),
                json!({"id": "Identifier.system", "path": "Identifier.system", "min": 0, "max": "1", "type": [{"code": "uri"}]}),
                json!({"id": "Identifier.value", "path": "Identifier.value", "min": 0, "max": "1", "type": [{"code": "string"}]}),
            ],
        )])
    }

    fn ids(sd: &Value) -> Vec<String> {
        sd["snapshot"]["element"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
    }

    #[test]
    fn slices_unroll_datatypes_and_keep_order() {
        let sd = json!({"url": "urn:p", "differential": {"element": [
            {"id": "Patient.identifier", "path": "Patient.identifier", "min": 1,
             "slicing": {"discriminator": [{"type": "value", "path": "system"}], "rules": "open"}},
            {"id": "Patient.identifier:kvnr", "path": "Patient.identifier", "sliceName": "kvnr", "max": "1",
             "constraint": [{"key": "k-1", "severity": "error", "human": "h", "expression": "value.exists()"}]},
            {"id": "Patient.identifier:kvnr.system", "path": "Patient.identifier.system", "min": 1, "fixedUri": "http://fhir.de/sid/gkv/kvid-10"},
            {"path": "Patient.contact.name", "min": 1},
            {"path": "Patient.deceasedBoolean", "min": 1}
        ]}});
        let out = generate(&sd, &base(), &types()).unwrap();
        assert_eq!(
            ids(&out),
            [
                "Patient",
                "Patient.identifier",
                "Patient.identifier:kvnr",
                "Patient.identifier:kvnr.system",
                "Patient.identifier:kvnr.value",
                "Patient.deceased[x]",
                "Patient.contact",
                "Patient.contact.name"
            ]
        );
        let el = out["snapshot"]["element"].as_array().unwrap();
        // the slice starts from the base (min 0), not from the constrained sliced element
        assert_eq!(el[2]["min"], 0);
        assert_eq!(el[2]["max"], "1");
        assert_eq!(el[2]["constraint"][0]["source"], "urn:p");
        assert_eq!(el[3]["path"], "Patient.identifier.system");
        assert_eq!(el[3]["fixedUri"], "http://fhir.de/sid/gkv/kvid-10");
        assert_eq!(el[5]["type"], json!([{"code": "boolean"}]));
        assert_eq!(el[7]["min"], 1);
    }

    #[test]
    fn broken_differentials_name_the_element() {
        let cases = [
            (json!({"id": "Patient.identifier", "path": "Patient.identifier", "max": "2"}), "Patient.identifier", "min"),
            (json!({"id": "Patient.deceased[x]", "path": "Patient.deceased[x]", "max": "2"}), "Patient.deceased[x]", "exceeds"),
            (json!({"id": "Patient.foo", "path": "Patient.foo"}), "Patient.foo", "no element"),
            (json!({"id": "Patient.identifier", "path": "Patient.identifier", "type": [{"code": "string"}]}), "Patient.identifier", "not allowed"),
            (json!({"id": "Patient.contact:x", "path": "Patient.contact", "sliceName": "x"}), "Patient.contact:x", "no slicing"),
            (json!({"id": "Patient.deceased[x].value", "path": "Patient.deceased[x].value"}), "Patient.deceased[x].value", "types"),
            (json!({"id": "Patient.contact.name.given", "path": "Patient.contact.name.given"}), "Patient.contact.name.given", "HumanName not found"),
        ];
        for (d, el, msg) in cases {
            let sd = json!({"url": "urn:p", "differential": {"element": [d]}});
            match generate(&sd, &base(), &types()) {
                Err(SnapshotError::Element { element, message }) => {
                    assert_eq!(element, el);
                    if msg != "min" {
                        assert!(message.contains(msg), "{message}");
                    }
                }
                other => {
                    // max 2 on a repeating element is a legal narrowing of *
                    assert!(msg == "min" && other.is_ok(), "{el}: {other:?}");
                }
            }
        }
        assert!(matches!(generate(&json!({"url": "u"}), &base(), &types()), Err(SnapshotError::Malformed(..))));
    }
}
