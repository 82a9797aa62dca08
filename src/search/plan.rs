//! Query planning: a parsed [`SearchRequest`] → portable SQL over the store's
//! index tables (see `store` for the schema). Every criterion becomes
//! `r.rkey IN (SELECT rkey FROM idx_… WHERE …)`, criteria are AND-ed, values
//! of one criterion OR-ed. Date and number comparisons follow R4
//! `search.html#prefix` on ranges: a stored value `[lo, hi)` against a search
//! value `[plo, phi)` implied by its precision.
//!
//! Paging: without `_sort`, results are ordered by the resource's stable key
//! and pages continue after the last key seen (keyset paging: every match is
//! visited exactly once even while writes go on); with `_sort`, pages use an
//! offset.

use super::extract::{normalize, precision_half_width};
use super::params::{split_pipe, split_prefix, unescape, Criterion, Prefix, SearchRequest, SortKey};
use super::{ParamKind, SearchError};
use crate::fhir::datetime;
use crate::store::{Sql, RESOURCE_COLUMNS};

fn invalid(param: &str, msg: impl Into<String>) -> SearchError {
    SearchError::InvalidValue { param: param.to_owned(), msg: msg.into() }
}

/// Smallest string greater than every string with prefix `p` (for index range scans).
fn prefix_upper(p: &str) -> String {
    let mut s = p.to_owned();
    s.push(char::MAX);
    s
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

/// `[lo, hi)` of a date search value, or an error naming the parameter.
fn date_value(param: &str, v: &str) -> Result<(i64, i64), SearchError> {
    datetime::parse(v).map(|r| (r.lo, r.hi)).ok_or_else(|| invalid(param, format!("'{v}' is not a FHIR date/dateTime")))
}

fn date_cond(sql: &mut Sql, lo_col: &str, hi_col: &str, prefix: Prefix, plo: i64, phi: i64) {
    match prefix {
        Prefix::Eq => sql.push(&format!("({lo_col} >= ")).int_param(plo).push(&format!(" AND {hi_col} <= ")).int_param(phi).push(")"),
        Prefix::Ne => sql.push(&format!("NOT ({lo_col} >= ")).int_param(plo).push(&format!(" AND {hi_col} <= ")).int_param(phi).push(")"),
        Prefix::Gt => sql.push(&format!("{hi_col} > ")).int_param(phi),
        Prefix::Lt => sql.push(&format!("{lo_col} < ")).int_param(plo),
        Prefix::Ge => sql
            .push(&format!("({hi_col} > "))
            .int_param(phi)
            .push(&format!(" OR ({lo_col} >= "))
            .int_param(plo)
            .push(&format!(" AND {hi_col} <= "))
            .int_param(phi)
            .push("))"),
        Prefix::Le => sql
            .push(&format!("({lo_col} < "))
            .int_param(plo)
            .push(&format!(" OR ({lo_col} >= "))
            .int_param(plo)
            .push(&format!(" AND {hi_col} <= "))
            .int_param(phi)
            .push("))"),
        Prefix::Sa => sql.push(&format!("{lo_col} >= ")).int_param(phi),
        Prefix::Eb => sql.push(&format!("{hi_col} <= ")).int_param(plo),
        Prefix::Ap => {
            let now = datetime::now_micros();
            let gap = ((now - plo).abs() / 10).max(phi - plo);
            sql.push(&format!("({lo_col} < ")).int_param(phi + gap).push(&format!(" AND {hi_col} > ")).int_param(plo - gap).push(")")
        }
    };
}

fn number_cond(sql: &mut Sql, param: &str, prefix: Prefix, text: &str) -> Result<(), SearchError> {
    let v: f64 = text.parse().map_err(|_| invalid(param, format!("'{text}' is not a number")))?;
    let w = precision_half_width(text);
    match prefix {
        Prefix::Eq => sql.push("(value >= ").real_param(v - w).push(" AND value < ").real_param(v + w).push(")"),
        Prefix::Ne => sql.push("NOT (value >= ").real_param(v - w).push(" AND value < ").real_param(v + w).push(")"),
        Prefix::Gt | Prefix::Sa => sql.push("value > ").real_param(v),
        Prefix::Lt | Prefix::Eb => sql.push("value < ").real_param(v),
        Prefix::Ge => sql.push("value >= ").real_param(v),
        Prefix::Le => sql.push("value <= ").real_param(v),
        Prefix::Ap => {
            let d = (v * 0.1).abs().max(w);
            sql.push("(value >= ").real_param(v - d).push(" AND value <= ").real_param(v + d).push(")")
        }
    };
    Ok(())
}

fn or_join(sql: &mut Sql, parts: Vec<Sql>) {
    sql.push("(");
    for (i, p) in parts.into_iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        sql.append(p);
    }
    sql.push(")");
}

fn subquery(table: &str, rtype: &str, param: &str) -> Sql {
    let mut s = Sql::new(format!("SELECT rkey FROM {table} WHERE rtype = "));
    s.text_param(rtype).push(" AND param = ").text_param(param).push(" AND ");
    s
}

fn table_of(kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::String => "idx_string",
        ParamKind::Token => "idx_token",
        ParamKind::Reference => "idx_reference",
        ParamKind::Date => "idx_date",
        ParamKind::Number => "idx_number",
        ParamKind::Quantity => "idx_quantity",
        _ => "idx_uri",
    }
}

/// Is this criterion a good driver (an equality lookup on an index)?
fn can_drive(c: &Criterion) -> bool {
    match c {
        Criterion::Id(_) | Criterion::Chain { .. } | Criterion::Has { .. } => true,
        Criterion::Param { param, modifier, .. } => {
            matches!(param.kind, ParamKind::Token | ParamKind::Reference | ParamKind::String | ParamKind::Uri)
                && modifier.as_deref() != Some("not")
                && modifier.as_deref() != Some("contains")
        }
        _ => false,
    }
}

/// SQL boolean expression over alias `r` (a `resources` row of type `rtype`).
/// Index criteria are written as correlated `EXISTS` probes on `(rkey, param)`;
/// see [`criterion_sql_as`] for the driving form.
pub fn criterion_sql(rtype: &str, c: &Criterion) -> Result<Sql, SearchError> {
    criterion_sql_as(rtype, c, false, "r.rkey")
}

/// `drive = true` writes an index criterion as `r.rkey IN (index lookup)`, the
/// form a planner uses to drive the query from that index.
/// `key` is the SQL expression of the resource key the criterion tests.
fn criterion_sql_as(rtype: &str, c: &Criterion, drive: bool, key: &str) -> Result<Sql, SearchError> {
    let mut sql = Sql::default();
    match c {
        Criterion::Id(ids) => {
            sql.push("r.id IN (");
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.text_param(id.clone());
            }
            sql.push(")");
        }
        Criterion::LastUpdated(values) => {
            let mut parts = vec![];
            for v in values {
                let (p, rest) = split_prefix(v);
                let (lo, hi) = date_value("_lastUpdated", rest)?;
                let mut s = Sql::default();
                date_cond(&mut s, "r.last_updated", "(r.last_updated + 1)", p, lo, hi);
                parts.push(s);
            }
            or_join(&mut sql, parts);
        }
        Criterion::Missing { param, missing } => {
            sql.push(if *missing { "NOT EXISTS (" } else { "EXISTS (" });
            sql.push(&format!("SELECT 1 FROM {} x WHERE x.rkey = {key} AND x.param = ", table_of(param.kind)));
            sql.text_param(param.code.clone()).push(")");
        }
        Criterion::Param { param, modifier, values } => {
            let negate = modifier.as_deref() == Some("not");
            let mut parts = vec![];
            for v in values {
                let mut s = Sql::default();
                value_cond(&mut s, &param.code, param.kind, modifier.as_deref(), v)?;
                parts.push(s);
            }
            if drive && !negate {
                let mut sub = subquery(table_of(param.kind), rtype, &param.code);
                or_join(&mut sub, parts);
                sql.push(&format!("{key} IN (")).append(sub).push(")");
            } else {
                sql.push(if negate { "NOT EXISTS (" } else { "EXISTS (" });
                sql.push(&format!("SELECT 1 FROM {} x WHERE x.rkey = {key} AND x.param = ", table_of(param.kind)));
                sql.text_param(param.code.clone()).push(" AND ");
                or_join(&mut sql, parts);
                sql.push(")");
            }
        }
        Criterion::Chain { param, targets } => {
            let mut parts = vec![];
            for (t, inner) in targets {
                let mut s = subquery("idx_reference", rtype, &param.code);
                s.push("target_type = ").text_param(t.clone()).push(" AND target_id IN (SELECT r.id FROM resources r WHERE r.rtype = ");
                s.text_param(t.clone()).push(" AND r.deleted = 0 AND ");
                s.append(criterion_sql_as(t, inner, true, "r.rkey")?).push(")");
                parts.push(s);
            }
            sql.push(&format!("{key} IN ("));
            for (i, p) in parts.into_iter().enumerate() {
                if i > 0 {
                    sql.push(" UNION ");
                }
                sql.append(p);
            }
            sql.push(")");
        }
        Criterion::Has { source_type, ref_param, inner } => {
            sql.push("r.id IN (SELECT target_id FROM idx_reference WHERE rtype = ");
            sql.text_param(source_type.clone()).push(" AND param = ").text_param(ref_param.code.clone());
            sql.push(" AND target_type = ").text_param(rtype).push(" AND rkey IN (SELECT r.rkey FROM resources r WHERE r.rtype = ");
            sql.text_param(source_type.clone()).push(" AND r.deleted = 0 AND ");
            sql.append(criterion_sql_as(source_type, inner, true, "r.rkey")?).push("))");
        }
    }
    Ok(sql)
}

fn value_cond(s: &mut Sql, code: &str, kind: ParamKind, modifier: Option<&str>, raw: &str) -> Result<(), SearchError> {
    match kind {
        ParamKind::String => {
            let v = unescape(raw);
            match modifier {
                Some("exact") => {
                    s.push("exact = ").text_param(v);
                }
                Some("contains") => {
                    s.push("norm LIKE ").text_param(format!("%{}%", like_escape(&normalize(&v)))).push(" ESCAPE '\\'");
                }
                _ => {
                    let n = normalize(&v);
                    let hi = prefix_upper(&n);
                    s.push("(norm >= ").text_param(n).push(" AND norm < ").text_param(hi).push(")");
                }
            }
        }
        ParamKind::Token => match split_pipe(raw) {
            None => {
                s.push("code = ").text_param(unescape(raw));
            }
            Some((sys, code)) if sys.is_empty() => {
                s.push("(system IS NULL AND code = ").text_param(unescape(&code)).push(")");
            }
            Some((sys, code)) if code.is_empty() => {
                s.push("system = ").text_param(sys);
            }
            Some((sys, code)) => {
                s.push("(code = ").text_param(unescape(&code)).push(" AND system = ").text_param(sys).push(")");
            }
        },
        ParamKind::Reference => {
            let v = unescape(raw);
            let (t, i) = super::extract::parse_reference(&v);
            match (t, i) {
                (Some(t), Some(i)) if !v.contains("://") => {
                    s.push("(target_type = ").text_param(t).push(" AND target_id = ").text_param(i).push(")");
                }
                (Some(t), Some(i)) => {
                    s.push("(url = ").text_param(v.clone()).push(" OR (target_type = ").text_param(t);
                    s.push(" AND target_id = ").text_param(i).push("))");
                }
                _ if v.contains(':') => {
                    s.push("url = ").text_param(v);
                }
                _ => {
                    if !crate::fhir::is_valid_id(&v) {
                        return Err(invalid(code, format!("'{v}' is neither an id, Type/id nor a URL")));
                    }
                    s.push("(target_id = ").text_param(v);
                    if let Some(m) = modifier {
                        s.push(" AND target_type = ").text_param(m);
                    }
                    s.push(")");
                }
            }
        }
        ParamKind::Date => {
            let (p, rest) = split_prefix(raw);
            let (lo, hi) = date_value(code, rest)?;
            date_cond(s, "lo", "hi", p, lo, hi);
        }
        ParamKind::Number => {
            let (p, rest) = split_prefix(raw);
            number_cond(s, code, p, rest)?;
        }
        ParamKind::Quantity => {
            let (p, rest) = split_prefix(raw);
            let mut parts = rest.splitn(3, '|');
            let num = parts.next().unwrap_or("");
            let sys = parts.next().map(unescape).filter(|x| !x.is_empty());
            let unit = parts.next().map(unescape).filter(|x| !x.is_empty());
            s.push("(");
            number_cond(s, code, p, num)?;
            if let Some(sys) = sys {
                s.push(" AND system = ").text_param(sys);
            }
            if let Some(u) = unit {
                s.push(" AND code = ").text_param(u);
            }
            s.push(")");
        }
        ParamKind::Uri => {
            let v = unescape(raw);
            if modifier == Some("below") {
                let hi = prefix_upper(&v);
                s.push("(uri >= ").text_param(v).push(" AND uri < ").text_param(hi).push(")");
            } else {
                s.push("uri = ").text_param(v);
            }
        }
        ParamKind::Composite | ParamKind::Special => {
            return Err(SearchError::Unsupported(format!("{code}: {} parameters are not supported", kind.as_str())))
        }
    }
    Ok(())
}

/// WHERE clause (without the word) for a request: type, not deleted, criteria.
///
/// The first criterion that is an index equality lookup drives the query;
/// the others are probes. Without one, resources of the type are scanned in
/// key order and probed (paging with `LIMIT` then stops early).
pub fn where_sql(req: &SearchRequest) -> Result<Sql, SearchError> {
    let driver = req.criteria.iter().position(can_drive);
    let mut sql = Sql::new("r.deleted = 0");
    match driver.map(|i| &req.criteria[i]) {
        // the driver's index lookup is already restricted to the type; repeating
        // `r.rtype = ?` here would tempt a planner to scan the type instead
        Some(Criterion::Param { .. }) => {}
        _ => {
            sql.push(" AND r.rtype = ").text_param(req.rtype.clone());
        }
    }
    for (i, c) in req.criteria.iter().enumerate() {
        sql.push(" AND ").append(criterion_sql_as(&req.rtype, c, Some(i) == driver, "r.rkey")?);
    }
    Ok(sql)
}

fn sort_expr(key: &SortKey, desc: bool) -> Sql {
    match key {
        SortKey::Id => Sql::new("r.id"),
        SortKey::LastUpdated => Sql::new("r.last_updated"),
        SortKey::Param(code, kind) => {
            let (col, table) = match kind {
                ParamKind::String => ("norm", "idx_string"),
                ParamKind::Token => ("code", "idx_token"),
                ParamKind::Reference => ("target_id", "idx_reference"),
                ParamKind::Date => (if desc { "hi" } else { "lo" }, "idx_date"),
                ParamKind::Number => ("value", "idx_number"),
                ParamKind::Quantity => ("value", "idx_quantity"),
                _ => ("uri", "idx_uri"),
            };
            let agg = if desc { "MAX" } else { "MIN" };
            let mut s = Sql::new(format!("(SELECT {agg}({col}) FROM {table} x WHERE x.rkey = r.rkey AND x.param = "));
            s.text_param(code.clone()).push(")");
            s
        }
    }
}

/// Paging position decoded from `_page`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    First,
    After(i64),
    Before(i64),
    Offset(usize),
}

pub fn parse_page(p: Option<&str>) -> Result<Page, SearchError> {
    let Some(p) = p else { return Ok(Page::First) };
    let bad = || invalid("_page", "not a page token from this server");
    let (kind, n) = p.split_at(1.min(p.len()));
    match kind {
        "a" => Ok(Page::After(n.parse().map_err(|_| bad())?)),
        "b" => Ok(Page::Before(n.parse().map_err(|_| bad())?)),
        "o" => Ok(Page::Offset(n.parse().map_err(|_| bad())?)),
        _ => Err(bad()),
    }
}

/// Without `_sort`, when an index equality criterion can drive: select the
/// page's keys entirely inside the index tables — the driver's index yields
/// keys in order, the other criteria probe `(rkey, param)`, and `LIMIT` stops
/// the scan early — then fetch just those rows.
fn index_page_sql(req: &SearchRequest, page: Page) -> Result<Option<Sql>, SearchError> {
    if !req.sort.is_empty() || matches!(page, Page::Offset(_)) {
        return Ok(None);
    }
    let Some(di) = req.criteria.iter().position(can_drive) else { return Ok(None) };
    let Criterion::Param { param, modifier, values } = &req.criteria[di] else { return Ok(None) };
    if req.criteria.iter().any(|c| matches!(c, Criterion::Id(_) | Criterion::Has { .. })) {
        return Ok(None); // these test r.id
    }
    let mut inner = Sql::new(format!("SELECT DISTINCT d.rkey FROM {} d WHERE d.rtype = ", table_of(param.kind)));
    inner.text_param(req.rtype.clone()).push(" AND d.param = ").text_param(param.code.clone()).push(" AND ");
    let mut parts = vec![];
    for v in values {
        let mut s = Sql::default();
        value_cond(&mut s, &param.code, param.kind, modifier.as_deref(), v)?;
        parts.push(s);
    }
    or_join(&mut inner, parts);
    for (i, c) in req.criteria.iter().enumerate() {
        if i != di {
            inner.push(" AND ").append(criterion_sql_as(&req.rtype, c, false, "d.rkey")?);
        }
    }
    let desc = matches!(page, Page::Before(_));
    match page {
        Page::After(k) => {
            inner.push(" AND d.rkey > ").int_param(k);
        }
        Page::Before(k) => {
            inner.push(" AND d.rkey < ").int_param(k);
        }
        _ => {}
    }
    let dir = if desc { " DESC" } else { " ASC" };
    inner.push(&format!(" ORDER BY d.rkey{dir} LIMIT ")).int_param(req.count as i64 + 1);
    let mut sql = Sql::new(format!("SELECT {RESOURCE_COLUMNS} FROM resources r WHERE r.deleted = 0 AND r.rkey IN ("));
    sql.append(inner).push(&format!(") ORDER BY r.rkey{dir}"));
    Ok(Some(sql))
}

/// The page query: fetches `count + 1` rows to know whether a next page exists.
pub fn page_sql(req: &SearchRequest, page: Page) -> Result<Sql, SearchError> {
    if let Some(sql) = index_page_sql(req, page)? {
        return Ok(sql);
    }
    let mut sql = Sql::new(format!("SELECT {RESOURCE_COLUMNS} FROM resources r WHERE "));
    sql.append(where_sql(req)?);
    let limit = req.count as i64 + 1;
    if req.sort.is_empty() {
        match page {
            Page::After(k) => {
                sql.push(" AND r.rkey > ").int_param(k).push(" ORDER BY r.rkey ASC");
            }
            Page::Before(k) => {
                sql.push(" AND r.rkey < ").int_param(k).push(" ORDER BY r.rkey DESC");
            }
            _ => {
                sql.push(" ORDER BY r.rkey ASC");
            }
        }
        sql.push(" LIMIT ").int_param(limit);
    } else {
        sql.push(" ORDER BY ");
        for (key, desc) in &req.sort {
            let e = sort_expr(key, *desc);
            // NULLs last in both dialects
            sql.append(e.clone()).push(" IS NULL, ").append(e).push(if *desc { " DESC, " } else { " ASC, " });
        }
        sql.push("r.rkey ASC LIMIT ").int_param(limit);
        let off = if let Page::Offset(o) = page { o } else { 0 };
        sql.push(" OFFSET ").int_param(off as i64);
    }
    Ok(sql)
}

pub fn count_sql(req: &SearchRequest) -> Result<Sql, SearchError> {
    let mut sql = Sql::new("SELECT COUNT(*) FROM resources r WHERE ");
    sql.append(where_sql(req)?);
    Ok(sql)
}

/// (type, id) of the targets of reference parameter `param` (None = all) of the given resources.
pub fn include_targets_sql(rkeys: &[i64], param: Option<&str>, target_type: Option<&str>) -> Sql {
    // COALESCE keeps the planner off the (target_type, target_id) index: the
    // rkey list is the selective part (idx_reference_kp)
    let mut sql = Sql::new("SELECT DISTINCT target_type, target_id FROM idx_reference WHERE COALESCE(target_type, '') <> '' AND COALESCE(target_id, '') <> '' AND rkey IN (");
    for (i, k) in rkeys.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.int_param(*k);
    }
    sql.push(")");
    if let Some(p) = param {
        sql.push(" AND param = ").text_param(p);
    }
    if let Some(t) = target_type {
        sql.push(" AND target_type = ").text_param(t);
    }
    sql
}

pub fn resources_by_ids_sql(rtype: &str, ids: &[String]) -> Sql {
    let mut sql = Sql::new(format!("SELECT {RESOURCE_COLUMNS} FROM resources r WHERE r.deleted = 0 AND r.rtype = "));
    sql.text_param(rtype).push(" AND r.id IN (");
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.text_param(id.clone());
    }
    sql.push(")");
    sql
}

/// Resources of `source_type` whose `param` references one of `targets` (type, id).
pub fn revinclude_sql(source_type: &str, param: Option<&str>, targets: &[(String, String)], limit: usize) -> Sql {
    let mut sql = Sql::new(format!("SELECT {RESOURCE_COLUMNS} FROM resources r WHERE r.deleted = 0 AND r.rtype = "));
    sql.text_param(source_type).push(" AND r.rkey IN (SELECT rkey FROM idx_reference WHERE rtype = ").text_param(source_type);
    if let Some(p) = param {
        sql.push(" AND param = ").text_param(p);
    }
    sql.push(" AND (");
    for (i, (t, id)) in targets.iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        sql.push("(target_type = ").text_param(t.clone()).push(" AND target_id = ").text_param(id.clone()).push(")");
    }
    sql.push(")) LIMIT ").int_param(limit as i64);
    sql
}

/// The current resources of the Patient compartment of `patients`
/// (R4 `compartmentdefinition.html`, `patient-operation-everything.html`):
/// every resource of a member type whose compartment parameter references one
/// of the patients, restricted to `types` when given and to resources changed
/// at or after `since` (µs). Ordered by type, then storage order.
pub fn compartment_sql(members: &[(String, Vec<String>)], patients: &[String], types: Option<&[String]>, since: Option<i64>) -> Sql {
    let mut sql = Sql::new(format!(
        "SELECT {RESOURCE_COLUMNS} FROM resources r WHERE r.deleted = 0 AND r.rkey IN (SELECT rkey FROM idx_reference WHERE target_type = 'Patient' AND target_id IN ("
    ));
    for (i, id) in patients.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.text_param(id.clone());
    }
    sql.push(") AND (");
    let mut first = true;
    for (t, params) in members {
        if types.is_some_and(|ts| !ts.iter().any(|x| x == t)) {
            continue;
        }
        if !first {
            sql.push(" OR ");
        }
        first = false;
        sql.push("(rtype = ").text_param(t.clone()).push(" AND param IN (");
        for (i, p) in params.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.text_param(p.clone());
        }
        sql.push("))");
    }
    if first {
        sql.push("1 = 0");
    }
    sql.push("))");
    if let Some(s) = since {
        sql.push(" AND r.last_updated >= ").int_param(s);
    }
    // no ORDER BY: sorting rows with their bodies in SQLite copies every body;
    // the caller orders the rows (by type, then key)
    sql
}
