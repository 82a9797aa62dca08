//! Command-line work beyond `serve`: `load` (bulk ingest through the write
//! pipeline, into a running server or straight into a store), `validate`
//! (offline validation with a readable report and exit status), `import`
//! (a CSV/JSON export through an institution's mapping) and `bench`
//! (throughput/latency benchmarks that print figures; never timed tests;
//! `bench_link.rs`: the master patient index's quality and speed;
//! `bench_report.rs`: measures and bulk export over generated patients),
//! `report` (a measure over a store, with a progress bar).

pub mod bench;
pub mod bench_link;
pub mod bench_report;
pub mod import;
pub mod load;
pub mod report;
pub mod de_variant;
pub mod validate;

use std::path::{Path, PathBuf};

/// Files under the given paths (directories recursively) with one of the extensions, sorted.
pub fn collect_files(paths: &[PathBuf], exts: &[&str]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = vec![];
    fn walk(p: &Path, exts: &[&str], out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
            entries.sort();
            for e in entries {
                walk(&e, exts, out)?;
            }
        } else if p.is_file() {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if exts.iter().any(|x| name.ends_with(x)) && !name.ends_with(".expected.json") {
                out.push(p.to_path_buf());
            }
        } else {
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} not found", p.display())));
        }
        Ok(())
    }
    for p in paths {
        walk(p, exts, &mut out)?;
    }
    Ok(out)
}

/// Percentile of sorted microsecond latencies.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}
