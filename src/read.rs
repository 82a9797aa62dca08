//! The one read path: search execution (page, total, `_include`,
//! `_revinclude` with `:iterate`) over `store` + `search`. Read, vread and
//! history go straight to the store's keyed lookups. Everything that leaves
//! the process is read through here or those lookups and then passes the
//! request's access filter (`auth::filter::Access`).
//!
//! Follows R4 `search.html` (§3.1.1.4 paging, §3.1.1.5.5 `_include`/
//! `_revinclude`, §3.1.1.5.6 `_total`).
//!
//! Filtered search (a caller the filter restricts): the page is filled by
//! reading matches in storage order in chunks and keeping only permitted
//! rows until `_count` + 1 are found, so pages are full and `next` exists
//! only when a further permitted match does. Page tokens keep their meaning
//! (`a`/`b` = after/before a storage key; `o` = offset among the raw
//! matches of a sorted search, where `previous` is left out). `total` (and
//! `_summary=count`) counts the permitted matches, by scanning every match
//! in chunks, so it always equals what paging returns. Included resources
//! pass the same filter.
//!
//! Invariant: with a restricted caller, no row leaves `search` without the
//! filter's permit; `total` counts exactly the rows paging can return.

use crate::auth::filter::{Access, AccessError};
use crate::search::params::{Include, SearchRequest, Summary, Total};
use crate::search::plan::{self, Page};
use crate::search::SearchError;
use crate::services::Services;
use crate::store::{ResourceRow, StoreError};
use std::collections::{BTreeMap, HashSet};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Access(#[from] AccessError),
}

/// Max resources added by `_include`/`_revinclude` to one page.
pub const MAX_INCLUDES: usize = 1000;

#[derive(Debug, Default)]
pub struct SearchOutcome {
    pub matches: Vec<ResourceRow>,
    pub included: Vec<ResourceRow>,
    pub total: Option<i64>,
    pub next: Option<String>,
    pub prev: Option<String>,
}

/// Raw matches read per round while filling a filtered page or counting.
const FILTER_CHUNK: usize = 200;

/// Run a search for the request's caller (`access`): unrestricted callers
/// take the direct path; restricted ones see only permitted rows.
pub async fn search(services: &Services, req: &SearchRequest, access: &mut Access<'_>) -> Result<SearchOutcome, ReadError> {
    if access.is_unrestricted() {
        return search_unfiltered(services, req).await;
    }
    search_filtered(services, req, access).await
}

/// The permitted matches of `req` among all of them (`total` for restricted callers).
async fn count_permitted(services: &Services, req: &SearchRequest, access: &mut Access<'_>) -> Result<i64, ReadError> {
    let mut scan = req.clone();
    scan.sort.clear();
    scan.count = FILTER_CHUNK;
    let mut after: Option<i64> = None;
    let mut n = 0i64;
    loop {
        let page = after.map_or(Page::First, Page::After);
        let mut rows = services.store.query(plan::page_sql(&scan, page)?).await?;
        let more = rows.len() > FILTER_CHUNK;
        rows.truncate(FILTER_CHUNK);
        after = rows.last().map(|r| r.rkey);
        n += access.filter(rows).await?.len() as i64;
        if !more {
            return Ok(n);
        }
    }
}

async fn search_filtered(services: &Services, req: &SearchRequest, access: &mut Access<'_>) -> Result<SearchOutcome, ReadError> {
    let mut out = SearchOutcome::default();
    if req.summary == Some(Summary::Count) || req.count == 0 {
        out.total = Some(count_permitted(services, req, access).await?);
        return Ok(out);
    }
    let start = plan::parse_page(req.page.as_deref())?;
    // the first round reads what an unfiltered page would; later rounds more
    let mut chunk_req = req.clone();
    let backwards = matches!(start, Page::Before(_));
    // (row, its raw offset for sorted searches)
    let mut kept: Vec<(ResourceRow, usize)> = vec![];
    let mut cursor = start;
    let mut raw_seen = if let Page::Offset(o) = start { o } else { 0 };
    loop {
        let mut rows = services.store.query(plan::page_sql(&chunk_req, cursor)?).await?;
        let more_raw = rows.len() > chunk_req.count;
        rows.truncate(chunk_req.count);
        let last_key = rows.last().map(|r| r.rkey);
        let n = rows.len();
        let base = raw_seen;
        for (i, row) in rows.into_iter().enumerate() {
            if kept.len() > req.count {
                break;
            }
            let pos = base + i;
            for r in access.filter(vec![row]).await? {
                kept.push((r, pos));
            }
        }
        raw_seen += n;
        if kept.len() > req.count || !more_raw {
            break;
        }
        chunk_req.count = FILTER_CHUNK.max(req.count);
        cursor = if !req.sort.is_empty() {
            Page::Offset(raw_seen)
        } else if backwards {
            Page::Before(last_key.unwrap_or(i64::MIN))
        } else {
            Page::After(last_key.unwrap_or(i64::MAX))
        };
    }
    let more = kept.len() > req.count;
    kept.truncate(req.count);
    if backwards {
        kept.reverse();
    }
    if req.sort.is_empty() {
        let (first, last) = (kept.first().map(|r| r.0.rkey), kept.last().map(|r| r.0.rkey));
        match start {
            Page::Before(k) => {
                out.next = last.map(|x| format!("a{x}")).or(Some(format!("a{}", k - 1)));
                if more {
                    out.prev = first.map(|x| format!("b{x}"));
                }
            }
            Page::First => {
                if more {
                    out.next = last.map(|x| format!("a{x}"));
                }
            }
            _ => {
                if more {
                    out.next = last.map(|x| format!("a{x}"));
                }
                out.prev = first.map(|x| format!("b{x}"));
            }
        }
    } else if more {
        // the next page starts after the raw position of the last row shown
        out.next = kept.last().map(|(_, pos)| format!("o{}", pos + 1));
    }
    let rows: Vec<ResourceRow> = kept.into_iter().map(|(r, _)| r).collect();
    out.total = match req.total {
        Total::Accurate | Total::Estimate => Some(count_permitted(services, req, access).await?),
        Total::Default if start == Page::First && !more => Some(rows.len() as i64),
        _ => None,
    };
    let included = includes(services, req, &rows).await?;
    out.included = access.filter(included).await?;
    out.matches = rows;
    Ok(out)
}

async fn search_unfiltered(services: &Services, req: &SearchRequest) -> Result<SearchOutcome, ReadError> {
    let store = &services.store;
    let mut out = SearchOutcome::default();
    if req.summary == Some(Summary::Count) || req.count == 0 {
        out.total = Some(store.count(plan::count_sql(req)?).await?);
        return Ok(out);
    }
    let page = plan::parse_page(req.page.as_deref())?;
    let mut rows = store.query(plan::page_sql(req, page)?).await?;
    let more = rows.len() > req.count;
    rows.truncate(req.count);
    if let Page::Before(_) = page {
        rows.reverse();
    }
    if req.sort.is_empty() {
        let (first, last) = (rows.first().map(|r| r.rkey), rows.last().map(|r| r.rkey));
        match page {
            Page::Before(_) => {
                // we came backwards: there is a next page (where we came from); prev if more
                out.next = last.map(|k| format!("a{k}"));
                if more {
                    out.prev = first.map(|k| format!("b{k}"));
                }
            }
            Page::First => {
                if more {
                    out.next = last.map(|k| format!("a{k}"));
                }
            }
            _ => {
                if more {
                    out.next = last.map(|k| format!("a{k}"));
                }
                out.prev = first.map(|k| format!("b{k}"));
            }
        }
    } else {
        let off = if let Page::Offset(o) = page { o } else { 0 };
        if more {
            out.next = Some(format!("o{}", off + req.count));
        }
        if off > 0 {
            out.prev = Some(format!("o{}", off.saturating_sub(req.count)));
        }
    }
    out.total = match req.total {
        Total::Accurate | Total::Estimate => Some(store.count(plan::count_sql(req)?).await?),
        Total::Default if page == Page::First && !more => Some(rows.len() as i64),
        _ => None,
    };
    out.included = includes(services, req, &rows).await?;
    out.matches = rows;
    Ok(out)
}

async fn includes(services: &Services, req: &SearchRequest, rows: &[ResourceRow]) -> Result<Vec<ResourceRow>, ReadError> {
    if rows.is_empty() || (req.includes.is_empty() && req.revincludes.is_empty()) {
        return Ok(vec![]);
    }
    let mut seen: HashSet<(String, String)> = rows.iter().map(|r| (r.rtype.clone(), r.id.clone())).collect();
    let mut included: Vec<ResourceRow> = vec![];
    let mut frontier: Vec<ResourceRow> = rows.to_vec();
    for round in 0..4 {
        let mut new_rows: Vec<ResourceRow> = vec![];
        let applies = |inc: &Include| round == 0 || inc.iterate;
        for inc in req.includes.iter().filter(|i| applies(i)) {
            let src: Vec<i64> = frontier.iter().filter(|r| r.rtype == inc.source_type).map(|r| r.rkey).collect();
            if src.is_empty() {
                continue;
            }
            let pairs = services
                .store
                .pairs(plan::include_targets_sql(&src, inc.param.as_deref(), inc.target_type.as_deref()))
                .await?;
            let mut by_type: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (t, id) in pairs {
                if !seen.contains(&(t.clone(), id.clone())) && services.registry.is_type(&t) {
                    by_type.entry(t).or_default().push(id);
                }
            }
            for (t, ids) in by_type {
                for chunk in ids.chunks(200) {
                    for r in services.store.query(plan::resources_by_ids_sql(&t, chunk)).await? {
                        if seen.insert((r.rtype.clone(), r.id.clone())) {
                            new_rows.push(r);
                        }
                    }
                }
            }
        }
        for inc in req.revincludes.iter().filter(|i| applies(i)) {
            let targets: Vec<(String, String)> = frontier.iter().map(|r| (r.rtype.clone(), r.id.clone())).collect();
            for chunk in targets.chunks(200) {
                let sql = plan::revinclude_sql(&inc.source_type, inc.param.as_deref(), chunk, MAX_INCLUDES);
                for r in services.store.query(sql).await? {
                    if seen.insert((r.rtype.clone(), r.id.clone())) {
                        new_rows.push(r);
                    }
                }
            }
        }
        if new_rows.is_empty() || included.len() >= MAX_INCLUDES {
            break;
        }
        included.extend(new_rows.iter().cloned());
        frontier = new_rows;
        if !req.includes.iter().chain(&req.revincludes).any(|i| i.iterate) {
            break;
        }
    }
    included.truncate(MAX_INCLUDES);
    Ok(included)
}

/// The Patient compartment of `patients` (their own Patient resources first,
/// then every member resource, by type): the read behind `$everything` and
/// `$summary`. `types` restricts the resource types, `since` (µs) the
/// last-updated time.
pub async fn patient_compartment(
    services: &Services,
    patients: &[String],
    types: Option<&[String]>,
    since: Option<i64>,
) -> Result<Vec<ResourceRow>, ReadError> {
    let mut out = vec![];
    if patients.is_empty() {
        return Ok(out);
    }
    if types.is_none_or(|ts| ts.iter().any(|t| t == "Patient")) {
        for chunk in patients.chunks(200) {
            out.extend(
                services
                    .store
                    .query(plan::resources_by_ids_sql("Patient", chunk))
                    .await?
                    .into_iter()
                    .filter(|r| since.is_none_or(|s| r.last_updated >= s)),
            );
        }
        // in the order asked for (the first is the subject)
        out.sort_by_key(|r| patients.iter().position(|p| *p == r.id));
    }
    let mut seen: HashSet<(String, String)> = out.iter().map(|r| (r.rtype.clone(), r.id.clone())).collect();
    let own = out.len();
    for chunk in patients.chunks(200) {
        let sql = plan::compartment_sql(&services.registry.patient_compartment, chunk, types, since);
        for r in services.store.query(sql).await? {
            if seen.insert((r.rtype.clone(), r.id.clone())) {
                out.push(r);
            }
        }
    }
    // the Patients first (as asked for), then by type and storage key
    out[own..].sort_unstable_by(|a, b| a.rtype.cmp(&b.rtype).then(a.rkey.cmp(&b.rkey)));
    Ok(out)
}

/// The resources `rows` reference (one level, current versions), except
/// those already in `rows` and those of the `skip` types.
pub async fn referenced(services: &Services, rows: &[ResourceRow], skip: &[&str]) -> Result<Vec<ResourceRow>, ReadError> {
    let mut seen: HashSet<(String, String)> = rows.iter().map(|r| (r.rtype.clone(), r.id.clone())).collect();
    let mut by_type: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let keys: Vec<i64> = rows.iter().map(|r| r.rkey).collect();
    for chunk in keys.chunks(500) {
        for (t, id) in services.store.pairs(plan::include_targets_sql(chunk, None, None)).await? {
            if services.registry.is_type(&t) && !skip.contains(&t.as_str()) && seen.insert((t.clone(), id.clone())) {
                by_type.entry(t).or_default().push(id);
            }
        }
    }
    let mut out = vec![];
    for (t, ids) in by_type {
        for chunk in ids.chunks(200) {
            out.extend(services.store.query(plan::resources_by_ids_sql(&t, chunk)).await?);
        }
    }
    Ok(out)
}
