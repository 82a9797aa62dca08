//! Terminology for binding checks (R4 `terminologies.html` §4.1 binding
//! strengths, `valueset.html` §4.9.5 compose/expansion, `codesystem.html`
//! `content`): ValueSets become code sets, compiled lazily once per canonical
//! URL and cached. Sources, in order: ValueSets/CodeSystems added at run time
//! (profile packs, test definitions), the pre-computed expansions of
//! `hl7.fhir.r4.expansions#4.0.1`, then the core package and
//! `hl7.terminology.r4` (compose evaluated here: whole CodeSystems, concept
//! lists, imported ValueSets, exclusions of concept lists).
//!
//! A ValueSet we cannot enumerate (a filter, an external CodeSystem such as
//! SNOMED CT or LOINC whose content is not in the packages) compiles to
//! `None`: the caller then checks nothing — no terminology server, no false
//! errors. UCUM codes get a syntactic check only (`ucum_ok`).

use rustc_hash::{FxHashMap, FxHashSet};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// An enumerated ValueSet: (system, code) pairs and the bare codes.
#[derive(Debug, Default)]
pub struct CodeSet {
    pub pairs: FxHashSet<(String, String)>,
    pub codes: FxHashSet<String>,
}

impl CodeSet {
    pub fn contains(&self, system: Option<&str>, code: &str) -> bool {
        match system {
            Some(s) => self.pairs.contains(&(s.to_owned(), code.to_owned())),
            None => self.codes.contains(code),
        }
    }
    /// Whether any code of `system` is in the set.
    pub fn has_system(&self, system: &str) -> bool {
        self.pairs.iter().any(|(s, _)| s == system)
    }
}

/// A CodeSystem whose content we hold: its codes with their displays.
#[derive(Debug, Default)]
pub struct CodeSystemInfo {
    pub complete: bool,
    pub case_sensitive: bool,
    pub codes: FxHashMap<String, Option<String>>,
}

type Cache<T> = RwLock<FxHashMap<String, Option<Arc<T>>>>;

/// Lazily compiled ValueSets and CodeSystems.
#[derive(Debug, Default)]
pub struct Terminology {
    /// canonical url → file, from the packages' `.index.json` (core)
    files: FxHashMap<String, PathBuf>,
    /// package folders without an index: looked up by `<Type>-<id>.json`
    dirs: Vec<PathBuf>,
    expansions: Option<PathBuf>,
    /// definitions added at run time, by url (and url|version)
    extra: RwLock<FxHashMap<String, Arc<Value>>>,
    value_sets: Cache<CodeSet>,
    code_systems: Cache<CodeSystemInfo>,
}

fn strip_version(url: &str) -> &str {
    url.split('|').next().unwrap_or(url)
}

impl Terminology {
    /// Index the terminology in the package cache (cheap: reads one index file).
    pub fn load(cache: &Path) -> Terminology {
        let mut t = Terminology::default();
        let core = cache.join(crate::fhir::definitions::CORE_PACKAGE).join("package");
        if let Ok(raw) = std::fs::read(core.join(".index.json")) {
            if let Ok(ix) = serde_json::from_slice::<Value>(&raw) {
                for f in ix["files"].as_array().into_iter().flatten() {
                    if matches!(f["resourceType"].as_str(), Some("ValueSet" | "CodeSystem")) {
                        if let (Some(u), Some(n)) = (f["url"].as_str(), f["filename"].as_str()) {
                            t.files.insert(u.to_owned(), core.join(n));
                        }
                    }
                }
            }
        }
        let exp = cache.join("hl7.fhir.r4.expansions#4.0.1").join("package");
        if exp.is_dir() {
            t.expansions = Some(exp);
        }
        if let Ok(rd) = std::fs::read_dir(cache) {
            let mut dirs: Vec<PathBuf> =
                rd.flatten().map(|e| e.path()).filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("hl7.terminology"))).collect();
            dirs.sort();
            t.dirs = dirs.into_iter().map(|d| d.join("package")).collect();
        }
        t
    }

    /// A copy with the same sources and added definitions, and empty caches
    /// (so definitions added to the copy stay out of the original).
    pub fn fork(&self) -> Terminology {
        Terminology {
            files: self.files.clone(),
            dirs: self.dirs.clone(),
            expansions: self.expansions.clone(),
            extra: RwLock::new(self.extra.read().unwrap_or_else(|e| e.into_inner()).clone()),
            ..Default::default()
        }
    }

    /// Register a ValueSet or CodeSystem (profile packs, test definitions).
    pub fn add(&self, res: &Value) {
        let Some(url) = res.get("url").and_then(Value::as_str) else { return };
        let arc = Arc::new(res.clone());
        let mut extra = self.extra.write().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = res.get("version").and_then(Value::as_str) {
            extra.insert(format!("{url}|{v}"), arc.clone());
        }
        extra.insert(url.to_owned(), arc);
        // a new definition may change what was cached
        self.value_sets.write().unwrap_or_else(|e| e.into_inner()).clear();
        self.code_systems.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// A conformance resource added at run time (any type), by url.
    pub fn extra(&self, url: &str) -> Option<Arc<Value>> {
        let extra = self.extra.read().unwrap_or_else(|e| e.into_inner());
        extra.get(url).or_else(|| extra.get(strip_version(url))).cloned()
    }

    fn read_json(p: &Path) -> Option<Value> {
        serde_json::from_slice(&std::fs::read(p).ok()?).ok()
    }

    /// Find a definition of `rtype` by canonical url.
    fn find(&self, rtype: &str, url: &str, prefer_expansion: bool) -> Option<Arc<Value>> {
        if let Some(v) = self.extra(url) {
            return Some(v);
        }
        let url = strip_version(url);
        let id = url.rsplit('/').next().unwrap_or(url);
        let by_id = |dir: &Path| -> Option<Value> {
            let v = Self::read_json(&dir.join(format!("{rtype}-{id}.json")))?;
            (v.get("url").and_then(Value::as_str) == Some(url)).then_some(v)
        };
        if prefer_expansion {
            if let Some(v) = self.expansions.as_deref().and_then(by_id) {
                return Some(Arc::new(v));
            }
        }
        if let Some(v) = self.files.get(url).and_then(|p| Self::read_json(p)) {
            return Some(Arc::new(v));
        }
        self.dirs.iter().find_map(|d| by_id(d)).map(Arc::new)
    }

    /// The CodeSystem `url` if its content is in hand.
    pub fn code_system(&self, url: &str) -> Option<Arc<CodeSystemInfo>> {
        if let Some(c) = self.code_systems.read().unwrap_or_else(|e| e.into_inner()).get(url) {
            return c.clone();
        }
        let compiled = self.find("CodeSystem", url, false).map(|cs| {
            let mut info = CodeSystemInfo {
                complete: cs.get("content").and_then(Value::as_str) == Some("complete"),
                case_sensitive: cs.get("caseSensitive").and_then(Value::as_bool).unwrap_or(true),
                codes: FxHashMap::default(),
            };
            fn walk(cs: &Value, out: &mut FxHashMap<String, Option<String>>) {
                for c in cs.get("concept").and_then(Value::as_array).into_iter().flatten() {
                    if let Some(code) = c.get("code").and_then(Value::as_str) {
                        out.insert(code.to_owned(), c.get("display").and_then(Value::as_str).map(str::to_owned));
                    }
                    walk(c, out);
                }
            }
            walk(&cs, &mut info.codes);
            Arc::new(info)
        });
        self.code_systems.write().unwrap_or_else(|e| e.into_inner()).insert(url.to_owned(), compiled.clone());
        compiled
    }

    /// The enumerated content of ValueSet `url`, or None when it cannot be enumerated here.
    pub fn value_set(&self, url: &str) -> Option<Arc<CodeSet>> {
        self.value_set_depth(url, 0)
    }

    fn value_set_depth(&self, url: &str, depth: usize) -> Option<Arc<CodeSet>> {
        if let Some(c) = self.value_sets.read().unwrap_or_else(|e| e.into_inner()).get(url) {
            return c.clone();
        }
        if depth > 8 {
            return None;
        }
        let compiled = self.find("ValueSet", url, true).and_then(|vs| self.compile_vs(&vs, depth)).map(Arc::new);
        self.value_sets.write().unwrap_or_else(|e| e.into_inner()).insert(url.to_owned(), compiled.clone());
        compiled
    }

    fn compile_vs(&self, vs: &Value, depth: usize) -> Option<CodeSet> {
        let mut set = CodeSet::default();
        if let Some(exp) = vs.get("expansion") {
            let contains = exp.get("contains").and_then(Value::as_array)?;
            fn walk(items: &[Value], set: &mut CodeSet) {
                for c in items {
                    if let (Some(s), Some(code)) = (c.get("system").and_then(Value::as_str), c.get("code").and_then(Value::as_str)) {
                        set.pairs.insert((s.to_owned(), code.to_owned()));
                        set.codes.insert(code.to_owned());
                    }
                    if let Some(more) = c.get("contains").and_then(Value::as_array) {
                        walk(more, set);
                    }
                }
            }
            walk(contains, &mut set);
            let total = exp.get("total").and_then(Value::as_u64).unwrap_or(set.pairs.len() as u64);
            return (total as usize <= set.pairs.len()).then_some(set);
        }
        let compose = vs.get("compose")?;
        for inc in compose.get("include").and_then(Value::as_array)? {
            let part = self.include_codes(inc, depth)?;
            set.pairs.extend(part.pairs);
            set.codes.extend(part.codes);
        }
        for exc in compose.get("exclude").and_then(Value::as_array).into_iter().flatten() {
            let part = self.include_codes(exc, depth)?;
            for p in &part.pairs {
                set.pairs.remove(p);
            }
            set.codes = set.pairs.iter().map(|(_, c)| c.clone()).collect();
        }
        Some(set)
    }

    /// The codes one `compose.include` (or `exclude`) names; None when not enumerable.
    fn include_codes(&self, inc: &Value, depth: usize) -> Option<CodeSet> {
        if inc.get("filter").is_some() {
            return None;
        }
        let mut set: Option<CodeSet> = None;
        if let Some(system) = inc.get("system").and_then(Value::as_str) {
            let mut s = CodeSet::default();
            if let Some(concepts) = inc.get("concept").and_then(Value::as_array) {
                for c in concepts {
                    if let Some(code) = c.get("code").and_then(Value::as_str) {
                        s.pairs.insert((system.to_owned(), code.to_owned()));
                        s.codes.insert(code.to_owned());
                    }
                }
            } else {
                let cs = self.code_system(system)?;
                if !cs.complete {
                    return None;
                }
                for code in cs.codes.keys() {
                    s.pairs.insert((system.to_owned(), code.clone()));
                    s.codes.insert(code.clone());
                }
            }
            set = Some(s);
        }
        for imp in inc.get("valueSet").and_then(Value::as_array).into_iter().flatten() {
            let other = self.value_set_depth(imp.as_str()?, depth + 1)?;
            set = Some(match set {
                // include with system and valueSet: the intersection
                Some(mut s) => {
                    s.pairs.retain(|p| other.pairs.contains(p));
                    s.codes = s.pairs.iter().map(|(_, c)| c.clone()).collect();
                    s
                }
                None => CodeSet { pairs: other.pairs.clone(), codes: other.codes.clone() },
            });
        }
        set
    }
}

/// UCUM (`http://unitsofmeasure.org`) unit code, syntactically: printable
/// ASCII without spaces, balanced `[]`, `{}` and `()`, no empty annotation
/// context errors. A full UCUM grammar and unit table is out of scope.
pub fn ucum_ok(code: &str) -> bool {
    if code.is_empty() || !code.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
        return false;
    }
    let mut stack = vec![];
    for c in code.chars() {
        match c {
            '[' | '{' | '(' => stack.push(c),
            ']' | '}' | ')' => {
                let want = match c {
                    ']' => '[',
                    '}' => '{',
                    _ => '(',
                };
                if stack.pop() != Some(want) {
                    return false;
                }
            }
            _ => {}
        }
    }
    stack.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compose_concepts_and_exclusions() {
        let t = Terminology::default();
        t.add(&json!({"resourceType": "CodeSystem", "url": "http://x/cs", "content": "complete",
            "concept": [{"code": "a", "display": "A", "concept": [{"code": "a1"}]}, {"code": "b"}]}));
        t.add(&json!({"resourceType": "ValueSet", "url": "http://x/vs", "compose": {"include": [{"system": "http://x/cs"}],
            "exclude": [{"system": "http://x/cs", "concept": [{"code": "b"}]}]}}));
        t.add(&json!({"resourceType": "ValueSet", "url": "http://x/vs-filter", "compose": {"include": [{"system": "http://x/cs", "filter": [{"property": "concept", "op": "is-a", "value": "a"}]}]}}));
        let vs = t.value_set("http://x/vs").unwrap();
        assert!(vs.contains(Some("http://x/cs"), "a1"));
        assert!(!vs.contains(Some("http://x/cs"), "b"));
        assert!(vs.contains(None, "a"));
        assert!(t.value_set("http://x/vs-filter").is_none(), "filters are not evaluated");
        assert_eq!(t.code_system("http://x/cs").unwrap().codes.get("a"), Some(&Some("A".to_owned())));
    }

    #[test]
    fn ucum_syntax() {
        assert!(ucum_ok("mm[Hg]") && ucum_ok("kg/m2") && ucum_ok("{beats}/min") && ucum_ok("%"));
        assert!(!ucum_ok("mm Hg") && !ucum_ok("mm[Hg") && !ucum_ok(""));
    }
}
