//! Profile packs: a folder of conformance resources written by hand —
//! StructureDefinitions as differentials (profiles and extension
//! definitions), ValueSets and CodeSystems — plus a manifest `pack.toml`
//! naming the pack, its canonical base and which profiles are mandatory per
//! resource type (optionally per member institution or member type).
//!
//! Loading reads every `*.json` of the folder, orders the StructureDefinitions
//! so a profile's base comes first (profiles on profiles, across packs too),
//! and generates each snapshot with [`super::snapshot`] (R4
//! `profiling.html`, `structuredefinition.html` §snapshot). Bases outside the
//! packs come from the FHIR package cache (`hl7.fhir.r4.core#4.0.1` and any
//! other installed package folder passed in): only the definitions a pack
//! actually needs are read, on demand, through `.index.json` — that is the
//! cache that keeps start-up short.
//!
//! A broken pack is an error naming the file and, for snapshot problems, the
//! element — never a panic; the gateway refuses to start on it.
//!
//! Manifest (`pack.toml`):
//! ```toml
//! name = "de-region"
//! canonical = "https://carebridge.example/fhir/de-region"
//! [mandatory]                     # every member
//! Patient = ["https://carebridge.example/fhir/de-region/StructureDefinition/de-patient"]
//! [[members]]                     # extra rules for some members
//! ids = ["klinikum-nord"]         # member institution ids, and/or
//! types = ["hospital"]            # member types
//! [members.mandatory]
//! Encounter = ["https://carebridge.example/fhir/de-region/StructureDefinition/de-encounter"]
//! ```

use super::snapshot::{self, unversioned, Resolver, SnapshotError};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("reading {0}: {1}")]
    Io(String, std::io::Error),
    #[error("parsing {0}: {1}")]
    Parse(String, String),
    #[error("pack {0}: {1}")]
    Manifest(String, String),
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("{file}: snapshot: {source}")]
    Snapshot { file: String, source: SnapshotError },
}

fn invalid(file: &Path, message: impl Into<String>) -> PackError {
    PackError::Invalid { file: file.display().to_string(), message: message.into() }
}

/// `pack.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub canonical: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// resource type → profiles every resource of that type must conform to
    #[serde(default)]
    pub mandatory: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub members: Vec<MemberRule>,
}

/// Mandatory profiles for some members only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberRule {
    #[serde(default)]
    pub ids: Vec<String>,
    #[serde(default)]
    pub types: Vec<String>,
    #[serde(default)]
    pub mandatory: BTreeMap<String, Vec<String>>,
}

/// Who is writing: the member institution and its type (both optional until
/// authentication identifies members).
#[derive(Debug, Clone, Copy, Default)]
pub struct Member<'a> {
    pub id: Option<&'a str>,
    pub kind: Option<&'a str>,
}

/// One loaded pack.
#[derive(Debug, Clone)]
pub struct Pack {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// StructureDefinitions with generated snapshots, bases before derived ones
    pub structure_definitions: Vec<Value>,
    pub value_sets: Vec<Value>,
    pub code_systems: Vec<Value>,
}

/// Snapshot elements by canonical URL: installed FHIR packages (read on
/// demand through their index) and the snapshots generated from packs.
#[derive(Default)]
pub struct SnapshotSource {
    files: HashMap<String, PathBuf>,
    loaded: Mutex<HashMap<String, Arc<Vec<Value>>>>,
}

impl SnapshotSource {
    /// Index the StructureDefinitions of an installed package folder
    /// (`.index.json`, or the files' own `url` when a package has no index).
    pub fn add_package_dir(&mut self, dir: &Path) -> Result<usize, PackError> {
        let index_path = dir.join(".index.json");
        let mut n = 0;
        if index_path.exists() {
            let raw = std::fs::read(&index_path).map_err(|e| PackError::Io(index_path.display().to_string(), e))?;
            let index: Value = serde_json::from_slice(&raw).map_err(|e| PackError::Parse(index_path.display().to_string(), e.to_string()))?;
            for f in index["files"].as_array().into_iter().flatten() {
                if f["resourceType"] == "StructureDefinition" {
                    if let (Some(url), Some(file)) = (f["url"].as_str(), f["filename"].as_str()) {
                        self.files.entry(url.to_owned()).or_insert_with(|| dir.join(file));
                        n += 1;
                    }
                }
            }
            return Ok(n);
        }
        let rd = std::fs::read_dir(dir).map_err(|e| PackError::Io(dir.display().to_string(), e))?;
        for entry in rd.flatten() {
            let p = entry.path();
            let name = p.file_name().and_then(|x| x.to_str()).unwrap_or("");
            if !(name.starts_with("StructureDefinition-") && name.ends_with(".json")) {
                continue;
            }
            let raw = std::fs::read(&p).map_err(|e| PackError::Io(p.display().to_string(), e))?;
            let v: Value = serde_json::from_slice(&raw).map_err(|e| PackError::Parse(p.display().to_string(), e.to_string()))?;
            if let Some(url) = v["url"].as_str() {
                self.files.entry(url.to_owned()).or_insert(p);
                n += 1;
            }
        }
        Ok(n)
    }

    /// Register a generated snapshot.
    pub fn insert(&self, url: &str, elements: Vec<Value>) {
        if let Ok(mut m) = self.loaded.lock() {
            m.insert(url.to_owned(), Arc::new(elements));
        }
    }

    pub fn knows(&self, url: &str) -> bool {
        let url = unversioned(url);
        self.files.contains_key(url) || self.loaded.lock().map(|m| m.contains_key(url)).unwrap_or(false)
    }
}

impl Resolver for SnapshotSource {
    fn snapshot_elements(&self, url: &str) -> Option<Arc<Vec<Value>>> {
        let url = unversioned(url);
        if let Some(x) = self.loaded.lock().ok()?.get(url) {
            return Some(x.clone());
        }
        let p = self.files.get(url)?;
        let raw = std::fs::read(p).ok()?;
        let v: Value = serde_json::from_slice(&raw).ok()?;
        let elems = match v.pointer("/snapshot/element") {
            Some(Value::Array(a)) => a.clone(),
            _ => return None,
        };
        let arc = Arc::new(elems);
        self.loaded.lock().ok()?.insert(url.to_owned(), arc.clone());
        Some(arc)
    }
}

/// Every `*.json` file under `dir` (sorted, recursive), `pack.toml` excluded.
fn json_files(dir: &Path) -> Result<Vec<PathBuf>, PackError> {
    let mut out = vec![];
    let rd = std::fs::read_dir(dir).map_err(|e| PackError::Io(dir.display().to_string(), e))?;
    for entry in rd {
        let p = entry.map_err(|e| PackError::Io(dir.display().to_string(), e))?.path();
        if p.is_dir() {
            out.extend(json_files(&p)?);
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

struct RawSd {
    file: PathBuf,
    url: String,
    base: String,
    sd: Value,
    pack: usize,
}

/// Load packs (in order) over the installed packages in `package_dirs`
/// (the core package folder first). Snapshots are generated for every pack
/// StructureDefinition; a pack's profiles may build on another pack's.
pub fn load(pack_dirs: &[PathBuf], package_dirs: &[PathBuf]) -> Result<Vec<Pack>, PackError> {
    let mut source = SnapshotSource::default();
    for d in package_dirs {
        source.add_package_dir(d)?;
    }
    let mut packs = vec![];
    let mut sds: Vec<RawSd> = vec![];
    for (pi, dir) in pack_dirs.iter().enumerate() {
        let mpath = dir.join("pack.toml");
        let text = std::fs::read_to_string(&mpath).map_err(|e| PackError::Io(mpath.display().to_string(), e))?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| PackError::Parse(mpath.display().to_string(), e.to_string()))?;
        let mut pack = Pack { dir: dir.clone(), manifest, structure_definitions: vec![], value_sets: vec![], code_systems: vec![] };
        for f in json_files(dir)? {
            let raw = std::fs::read(&f).map_err(|e| PackError::Io(f.display().to_string(), e))?;
            let v: Value = serde_json::from_slice(&raw).map_err(|e| PackError::Parse(f.display().to_string(), e.to_string()))?;
            let url = v["url"].as_str().map(str::to_owned).ok_or_else(|| invalid(&f, "no canonical url"))?;
            match v["resourceType"].as_str() {
                Some("StructureDefinition") => {
                    if v.pointer("/differential/element").and_then(Value::as_array).is_none() {
                        return Err(invalid(&f, "StructureDefinition without differential.element"));
                    }
                    let base = v["baseDefinition"].as_str().map(str::to_owned).ok_or_else(|| invalid(&f, "no baseDefinition"))?;
                    if v["derivation"].as_str() != Some("constraint") {
                        return Err(invalid(&f, "only constraints (derivation = constraint) are supported in packs"));
                    }
                    if sds.iter().any(|s| s.url == url) || source.knows(&url) {
                        return Err(invalid(&f, format!("{url} is defined twice")));
                    }
                    sds.push(RawSd { file: f, url, base: unversioned(&base).to_owned(), sd: v, pack: pi });
                }
                Some("ValueSet") => pack.value_sets.push(v),
                Some("CodeSystem") => pack.code_systems.push(v),
                other => return Err(invalid(&f, format!("unsupported resource in a pack: {}", other.unwrap_or("(no resourceType)")))),
            }
        }
        packs.push(pack);
    }
    // bases first: repeatedly take the definitions whose base is already known
    let mut pending = sds;
    while !pending.is_empty() {
        let before = pending.len();
        let mut rest = vec![];
        for r in pending {
            if rest.iter().any(|x: &RawSd| x.url == r.base) || !source.knows(&r.base) {
                rest.push(r);
                continue;
            }
            let base = source.snapshot_elements(&r.base).ok_or_else(|| invalid(&r.file, format!("base {} has no snapshot", r.base)))?;
            let base_type = base.first().and_then(|e| e["path"].as_str()).unwrap_or("");
            if r.sd["type"].as_str() != Some(base_type) {
                return Err(invalid(&r.file, format!("type {} differs from its base's type {base_type}", r.sd["type"])));
            }
            let out = snapshot::generate(&r.sd, &base, &source).map_err(|e| PackError::Snapshot { file: r.file.display().to_string(), source: e })?;
            let elems = out.pointer("/snapshot/element").and_then(Value::as_array).cloned().unwrap_or_default();
            source.insert(&r.url, elems);
            packs[r.pack].structure_definitions.push(out);
        }
        if rest.len() == before {
            let r = &rest[0];
            return Err(invalid(&r.file, format!("base {} not found (not in the packs, not in the installed packages) or circular", r.base)));
        }
        pending = rest;
    }
    // mandatory profiles must exist and fit their resource type
    for p in &packs {
        let all = p.manifest.mandatory.iter().chain(p.manifest.members.iter().flat_map(|m| m.mandatory.iter()));
        for (rtype, urls) in all {
            for u in urls {
                let sd = packs.iter().flat_map(|q| q.structure_definitions.iter()).find(|sd| sd["url"].as_str() == Some(unversioned(u)));
                let ty = match sd {
                    Some(sd) => sd["type"].as_str().map(str::to_owned),
                    None if source.knows(u) => source.snapshot_elements(u).and_then(|e| e.first().and_then(|e| e["path"].as_str().map(str::to_owned))),
                    None => return Err(PackError::Manifest(p.manifest.name.clone(), format!("mandatory profile {u} is not defined"))),
                };
                if ty.as_deref() != Some(rtype.as_str()) {
                    return Err(PackError::Manifest(p.manifest.name.clone(), format!("mandatory profile {u} for {rtype} profiles {}", ty.unwrap_or_default())));
                }
            }
        }
    }
    Ok(packs)
}

/// The mandatory-profile policy of the loaded packs.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    packs: Vec<Manifest>,
}

impl Policy {
    pub fn new(packs: &[Pack]) -> Self {
        Policy { packs: packs.iter().map(|p| p.manifest.clone()).collect() }
    }

    /// The profiles a resource of `rtype` written by `member` must conform to.
    pub fn mandatory(&self, rtype: &str, member: Member<'_>) -> Vec<&str> {
        let mut out: Vec<&str> = vec![];
        for m in &self.packs {
            out.extend(m.mandatory.get(rtype).into_iter().flatten().map(String::as_str));
            for r in &m.members {
                let hit = member.id.is_some_and(|id| r.ids.iter().any(|x| x == id)) || member.kind.is_some_and(|k| r.types.iter().any(|x| x == k));
                if hit {
                    out.extend(r.mandatory.get(rtype).into_iter().flatten().map(String::as_str));
                }
            }
        }
        out.dedup();
        out
    }

    pub fn is_empty(&self) -> bool {
        self.packs.iter().all(|m| m.mandatory.is_empty() && m.members.is_empty())
    }
}

/// Register every pack's definitions with the validator: StructureDefinitions
/// (with their generated snapshots), ValueSets and CodeSystems.
pub fn install(v: &mut super::Validator, packs: &[Pack]) -> Result<usize, PackError> {
    let mut n = 0;
    for p in packs {
        for r in p.structure_definitions.iter().chain(&p.value_sets).chain(&p.code_systems) {
            v.add_definition(r).map_err(|e| PackError::Invalid { file: p.dir.display().to_string(), message: format!("{}: {e}", r["url"].as_str().unwrap_or("")) })?;
            n += 1;
        }
    }
    Ok(n)
}

/// Load `pack_dirs` over the core package in `cache`, register their
/// definitions with `v` and return the mandatory-profile policy. This is what
/// the gateway runs at start-up; a broken pack is the error.
pub fn load_into(v: &mut super::Validator, pack_dirs: &[PathBuf], cache: &Path) -> Result<Policy, PackError> {
    if pack_dirs.is_empty() {
        return Ok(Policy::default());
    }
    let core = cache.join(crate::fhir::definitions::CORE_PACKAGE).join("package");
    let loaded = load(pack_dirs, &[core])?;
    install(v, &loaded)?;
    Ok(Policy::new(&loaded))
}
