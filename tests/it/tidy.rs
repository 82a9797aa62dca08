//! Tidy checks over the source tree: module dependencies point down the
//! layer list of DESIGN.md (api on top, fhir at the bottom), every module
//! has a `//!` doc, and no absolute machine paths are committed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Rank of each top-level module: a module may use only modules of a greater
/// rank (or itself). Assembly (`server`, `cli`) sits on top of `api`.
fn ranks() -> HashMap<&'static str, u8> {
    HashMap::from([
        ("cli", 0),
        ("server", 10),
        ("api", 20),
        ("config", 20),
        ("ingest", 30),
        ("summary", 30),
        ("report", 30),
        ("translate", 40),
        ("pipeline", 40),
        ("read", 40),
        ("workflow", 45),
        ("subscription", 45),
        ("identity", 50),
        ("auth", 55),
        ("services", 60),
        ("search", 70),
        ("validate", 70),
        ("store", 80),
        ("fhirpath", 90),
        ("fhir", 90),
    ])
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_owned())
}

#[test]
fn layers_point_down() {
    let src = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let ranks = ranks();
    let mut files = vec![];
    rust_files(&src, &mut files);
    let mut violations = vec![];
    for f in &files {
        let Some(m) = top_module(&src, f) else { continue };
        if m == "lib" || m == "main" {
            continue;
        }
        let my = *ranks.get(m.as_str()).unwrap_or_else(|| panic!("module {m} has no rank in tidy.rs (add it with its layer)"));
        let text = std::fs::read_to_string(f).unwrap();
        for line in text.lines() {
            let l = line.trim_start();
            for prefix in ["use crate::", "crate::"] {
                let mut rest = l;
                while let Some(pos) = rest.find(prefix) {
                    let after = &rest[pos + prefix.len()..];
                    let used: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if let Some(&r) = ranks.get(used.as_str()) {
                        if used != m && r <= my {
                            violations.push(format!("{}: {m} uses {used}", f.display()));
                        }
                    }
                    rest = &after[used.len()..];
                }
            }
        }
    }
    violations.sort();
    violations.dedup();
    assert!(violations.is_empty(), "layer violations:\n{}", violations.join("\n"));
}

#[test]
fn every_module_has_a_doc() {
    let src = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let mut files = vec![];
    rust_files(&src, &mut files);
    let missing: Vec<String> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().trim_start().starts_with("//!"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(missing.is_empty(), "files without a //! module doc:\n{}", missing.join("\n"));
}

#[test]
fn no_machine_paths_committed() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![];
    for d in ["src", "tests", "scripts", "fixtures", "profiles", ".ci"] {
        let p = root.join(d);
        if p.is_dir() {
            let mut all = vec![];
            collect_all(&p, &mut all);
            files.extend(all);
        }
    }
    for f in ["README.md", "Cargo.toml", "docker-compose.yml", "Dockerfile"] {
        files.push(root.join(f));
    }
    let needles = [concat!("/wo", "rk/"), concat!("/ro", "ot/")];
    let bad: Vec<String> = files
        .iter()
        .filter(|f| f.is_file())
        .filter(|f| std::fs::read_to_string(f).map(|t| needles.iter().any(|n| t.contains(n))).unwrap_or(false))
        .map(|f| f.display().to_string())
        .collect();
    assert!(bad.is_empty(), "absolute machine paths in: {bad:?}");
}

fn collect_all(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_all(&p, out);
        } else {
            out.push(p);
        }
    }
}
