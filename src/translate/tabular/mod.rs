//! CSV / JSON exports → FHIR R4: one export file of a member institution in,
//! one `transaction` Bundle per patient group out, through the institution's
//! mapping file. Pure functions, no I/O (DESIGN.md: translators never write
//! to the store; they produce Bundles for the write pipeline).
//!
//! # Specs followed
//! * FHIR R4 `bundle.html` (transaction: every entry `PUT Type/id` with
//!   `fullUrl = urn:uuid:<id>`), `http.html` §3.1.0.11 (transaction rules),
//!   `provenance.html` (one Provenance per group: target, agent, entity,
//!   activity), `json.html` (no empty values), `datatypes.html` (date,
//!   dateTime, decimal formats).
//! * JSON Schema 2020-12 (Core and Validation; the `jsonschema` crate) for
//!   the schema each mapping ships: every row — CSV rows as objects of
//!   strings — is checked before it is translated.
//! * RFC 4180 (CSV, via the `csv` crate), RFC 6901 (JSON pointer to the
//!   records), RFC 9562 §5.5 (UUIDv5 ids, shared with HL7 v2: [`crate::translate::ids`]).
//!
//! # Flow
//! 1. [`records`]: bytes → rows (JSON objects) with row numbers (CSV: the
//!    line the record starts on, header = row 1; JSON: position from 1).
//!    CSV: every column the schema lists in `required` must be in the header,
//!    else every row is rejected with one issue per missing column at row 1.
//! 2. Each row is checked against the schema: every violation is an issue
//!    (row, column, the schema's reason); a row with any error is rejected
//!    whole and contributes nothing.
//! 3. Each good row is converted ([`convert`]: dates by pattern, decimals
//!    by locale, code maps); every failure is an issue naming row and column
//!    (`unknown code`, `not a decimal`, `not a valid date`), the row is
//!    rejected.
//! 4. Rows are grouped by the mapping's `group` template (one patient);
//!    a group's resources are merged (the same id from several rows: the
//!    first row's elements win, later rows only add missing elements; a
//!    differing value is a warning at the later row).
//! 5. Per group: a transaction Bundle — the institution's Organization,
//!    the resources in row order, the Provenance last.
//!
//! # Ids
//! `id = UUIDv5(institution|Type|key)` with `key` the resource's `key`
//! template filled from the row (e.g. `http://fhir.de/sid/gkv/kvid-10|{kvnr}`):
//! re-importing a file rewrites the same resources (the pipeline's no-op
//! update makes that free), and rows of one patient in several files
//! converge on one Patient. The institution's Organization has the id the
//! HL7 v2 translator gives it. The Provenance is keyed by
//! `import|<sha256 of the file>|<group key>`.
//!
//! # Provenance
//! `target` = every resource of the group's bundle (Organization included);
//! `recorded` = the caller's `received_at`; `activity` = v3-DataOperation
//! `CREATE` (the ingest layer turns it into `UPDATE` when a target existed
//! before, and keeps `recorded`/`activity` of an existing Provenance of the
//! same file and group, so a re-import changes nothing); `agent` = the
//! institution (type `author`); `entity` (role `source`) = the file:
//! `what.identifier` = `urn:carebridge:import:sha256|<hex>`, `what.display` =
//! `<CSV|JSON> export <file name>, rows 2–4, 9`.
//!
//! # Output rules
//! No empty resources, arrays, objects or strings and never `null`/`"null"`
//! ([`crate::translate::prune`] runs on every resource); a field whose
//! column is empty is left out.

pub mod convert;
pub mod mapping;
pub mod path;
pub mod records;

use std::collections::HashMap;

use serde_json::{Map, Number, Value};

use crate::fhir::{IssueType, Severity};
use crate::translate::ids::{resource_id, sha256_hex};
use crate::translate::prune::prune;
pub use mapping::{Format, Mapping, MappingError};
use mapping::{Conv, Source, TPart, Template, When};

/// The export to translate.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub bytes: &'a [u8],
    pub format: Format,
    /// shown in the Provenance (`what.display`)
    pub file_name: &'a str,
}

/// A problem with the input, located at a row and column when it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct RowIssue {
    pub row: Option<usize>,
    pub column: Option<String>,
    pub severity: Severity,
    pub code: IssueType,
    pub message: String,
}

impl RowIssue {
    fn error(row: usize, column: Option<&str>, code: IssueType, message: impl Into<String>) -> Self {
        RowIssue { row: Some(row), column: column.map(str::to_owned), severity: Severity::Error, code, message: message.into() }
    }

    /// `row 7, column geburtsdatum` (or `row 7`).
    pub fn location(&self) -> Option<String> {
        match (self.row, &self.column) {
            (Some(r), Some(c)) => Some(format!("row {r}, column {c}")),
            (Some(r), None) => Some(format!("row {r}")),
            (None, Some(c)) => Some(format!("column {c}")),
            (None, None) => None,
        }
    }
}

/// One patient group: its transaction Bundle and where each entry came from.
#[derive(Debug, Clone)]
pub struct Group {
    pub key: String,
    /// row numbers, ascending
    pub rows: Vec<usize>,
    /// `transaction` Bundle: Organization, resources, Provenance (last)
    pub bundle: Value,
    /// rows that contributed to each entry (by entry index)
    pub entry_rows: Vec<Vec<usize>>,
}

/// The result of translating one export.
#[derive(Debug, Clone)]
pub struct Translation {
    pub rows_read: usize,
    /// lowercase hex SHA-256 of the bytes
    pub sha256: String,
    pub groups: Vec<Group>,
    /// rows with at least one error (not translated), ascending
    pub rejected_rows: Vec<usize>,
    /// errors and warnings, in row order
    pub issues: Vec<RowIssue>,
}

/// An export that cannot be read at all (nothing is located at a row).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TabularError {
    #[error("{0}")]
    Unreadable(String),
    #[error("the mapping of '{institution}' does not accept {format} input")]
    FormatNotAccepted { institution: String, format: &'static str },
}

/// Translates one export with `mapping`. `received_at` (a FHIR instant) is
/// the Provenance's `recorded`.
pub fn translate(mapping: &Mapping, input: &Input<'_>, received_at: &str) -> Result<Translation, TabularError> {
    let recs = match input.format {
        Format::Csv => {
            let cfg = mapping.csv.as_ref().ok_or_else(|| not_accepted(mapping, Format::Csv))?;
            records::read_csv(input.bytes, cfg)
        }
        Format::Json => {
            let cfg = mapping.json.as_ref().ok_or_else(|| not_accepted(mapping, Format::Json))?;
            records::read_json(input.bytes, cfg)
        }
    }
    .map_err(TabularError::Unreadable)?;
    let sha256 = sha256_hex(input.bytes);
    let rows_read = recs.rows.len();
    let mut issues = vec![];
    let mut rejected_rows = vec![];

    if let Some(header) = &recs.header {
        let missing: Vec<&String> = mapping.required_columns.iter().filter(|c| !header.contains(c)).collect();
        if !missing.is_empty() {
            for c in missing {
                issues.push(RowIssue::error(1, Some(c), IssueType::Required, format!("required column '{c}' is missing from the header")));
            }
            rejected_rows = recs.rows.iter().map(|r| r.number).collect();
            return Ok(Translation { rows_read, sha256, groups: vec![], rejected_rows, issues });
        }
    }

    // rows → resources, grouped
    let mut groups: Vec<GroupBuilder> = vec![];
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for row in recs.rows {
        let before = issues.len();
        let out = match row.values {
            Err(why) => {
                issues.push(RowIssue::error(row.number, None, IssueType::Structure, format!("the record {why}")));
                None
            }
            Ok(values) => translate_row(mapping, row.number, values, &mut issues),
        };
        match out {
            Some(out) if !issues[before..].iter().any(|i| i.severity <= Severity::Error) => {
                let gi = *by_key.entry(out.group.clone()).or_insert_with(|| {
                    groups.push(GroupBuilder::new(out.group.clone()));
                    groups.len() - 1
                });
                groups[gi].add_row(row.number, out.resources, &mut issues);
            }
            _ => rejected_rows.push(row.number),
        }
    }

    let org = organization(mapping);
    let org_id = mapping.organization_id();
    let groups = groups.into_iter().map(|g| g.finish(mapping, &org, &org_id, input, &sha256, received_at)).collect();
    issues.sort_by_key(|i| i.row.unwrap_or(0));
    Ok(Translation { rows_read, sha256, groups, rejected_rows, issues })
}

fn not_accepted(m: &Mapping, f: Format) -> TabularError {
    TabularError::FormatNotAccepted { institution: m.institution.clone(), format: f.as_str() }
}

/// A translated row: its group key and resources (type, id, content).
struct RowOut {
    group: String,
    resources: Vec<(String, String, Map<String, Value>)>,
}

/// A cell's value: its text, and whether JSON gave it as a number.
struct Cell {
    text: String,
    number: bool,
}

fn lookup<'v>(values: &'v Map<String, Value>, col: &str) -> Option<&'v Value> {
    let mut parts = col.split('.');
    let mut cur = values.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

fn cell(values: &Map<String, Value>, col: &str) -> Result<Option<Cell>, String> {
    Ok(match lookup(values, col) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let t = s.trim();
            (!t.is_empty()).then(|| Cell { text: t.to_owned(), number: false })
        }
        Some(Value::Number(n)) => Some(Cell { text: n.to_string(), number: true }),
        Some(Value::Bool(b)) => Some(Cell { text: b.to_string(), number: false }),
        Some(Value::Array(_)) => return Err("holds a list, not a single value".into()),
        Some(Value::Object(_)) => return Err("holds an object, not a single value".into()),
    })
}

/// Fills a template; `Err(column)` names the first empty column.
fn render(t: &Template, values: &Map<String, Value>) -> Result<String, String> {
    let mut s = String::new();
    for p in &t.parts {
        match p {
            TPart::Lit(l) => s.push_str(l),
            TPart::Col(c) => match cell(values, c) {
                Ok(Some(v)) => s.push_str(&v.text),
                _ => return Err(c.clone()),
            },
        }
    }
    Ok(s)
}

/// `/navn/fornavn` → `navn.fornavn`
fn pointer_to_column(p: &str) -> Option<String> {
    let c: Vec<String> = p.split('/').skip(1).map(|s| s.replace("~1", "/").replace("~0", "~")).collect();
    (!c.is_empty()).then(|| c.join("."))
}

fn schema_issues(m: &Mapping, number: usize, v: &Value, issues: &mut Vec<RowIssue>) -> bool {
    use jsonschema::error::ValidationErrorKind as K;
    let mut ok = true;
    for e in m.schema.iter_errors(v) {
        ok = false;
        let base = pointer_to_column(e.instance_path().as_str());
        let column = match e.kind() {
            K::Required { property } => {
                let p = property.as_str().map(str::to_owned).unwrap_or_else(|| property.to_string());
                Some(match base {
                    Some(b) => format!("{b}.{p}"),
                    None => p,
                })
            }
            K::AdditionalProperties { unexpected } | K::UnevaluatedProperties { unexpected } => Some(unexpected.join(", ")),
            _ => base,
        };
        let code = match e.kind() {
            K::Required { .. } => IssueType::Required,
            K::Enum { .. } | K::Constant { .. } => IssueType::CodeInvalid,
            K::AdditionalProperties { .. } | K::UnevaluatedProperties { .. } | K::Type { .. } => IssueType::Structure,
            _ => IssueType::Value,
        };
        issues.push(RowIssue::error(number, column.as_deref(), code, format!("schema: {e}")));
    }
    ok
}

fn translate_row(m: &Mapping, number: usize, values: Map<String, Value>, issues: &mut Vec<RowIssue>) -> Option<RowOut> {
    let v = Value::Object(values);
    if !schema_issues(m, number, &v, issues) {
        return None;
    }
    let Value::Object(values) = v else { unreachable!("built as an object") };
    let err_at = |issues: &mut Vec<RowIssue>, col: &str, code: IssueType, msg: String| {
        issues.push(RowIssue::error(number, Some(col), code, msg));
    };

    // which resources this row makes, and their ids (known before any is built)
    let mut ids: Vec<Option<String>> = Vec::with_capacity(m.resources.len());
    for r in &m.resources {
        let made = match &r.when {
            None => true,
            Some(When::Present(c)) => matches!(cell(&values, c), Ok(Some(_))),
            Some(When::Equals(c, want)) => matches!(cell(&values, c), Ok(Some(v)) if v.text == *want),
        };
        if !made {
            ids.push(None);
            continue;
        }
        match render(&r.key, &values) {
            Ok(key) => ids.push(Some(resource_id(&m.institution, &r.rtype, &key))),
            Err(col) => {
                err_at(issues, &col, IssueType::Required, format!("column '{col}' is empty but needed for the business key of the {} ({})", r.rtype, r.name));
                ids.push(None);
            }
        }
    }
    let group = match render(&m.group, &values) {
        Ok(g) => g,
        Err(col) => {
            err_at(issues, &col, IssueType::Required, format!("column '{col}' is empty but needed to group the row"));
            return None;
        }
    };

    let mut resources = Vec::new();
    let mut failed = false;
    for (ri, r) in m.resources.iter().enumerate() {
        let Some(id) = &ids[ri] else { continue };
        let mut res = Map::new();
        res.insert("resourceType".into(), Value::String(r.rtype.clone()));
        res.insert("id".into(), Value::String(id.clone()));
        for f in &r.fields {
            let value = match &f.source {
                Source::Const(v) => Some(v.clone()),
                Source::Template(t) => render(t, &values).ok().map(Value::String),
                Source::Reference(target) => ids[*target]
                    .as_ref()
                    .map(|tid| Value::Object(Map::from_iter([("reference".to_owned(), Value::String(format!("{}/{tid}", m.resources[*target].rtype)))]))),
                Source::Column { column, conv, map } => match column_value(m, &values, column, conv, map.as_deref()) {
                    Ok(v) => v,
                    Err((code, msg)) => {
                        err_at(issues, column, code, msg);
                        failed = true;
                        None
                    }
                },
            };
            if let Some(v) = value {
                f.path.set(&mut res, v);
            }
        }
        let mut rv = Value::Object(res);
        prune(&mut rv);
        let Value::Object(res) = rv else { continue };
        if res.keys().any(|k| k != "resourceType" && k != "id") {
            resources.push((r.rtype.clone(), id.clone(), res));
        }
    }
    (!failed).then_some(RowOut { group, resources })
}

fn column_value(m: &Mapping, values: &Map<String, Value>, column: &str, conv: &Conv, map: Option<&str>) -> Result<Option<Value>, (IssueType, String)> {
    let c = match cell(values, column) {
        Ok(Some(c)) => c,
        Ok(None) => return Ok(None),
        Err(why) => return Err((IssueType::Structure, format!("column '{column}' {why}"))),
    };
    let bad = |msg: String| (IssueType::Value, msg);
    let v = match conv {
        Conv::Text => match map {
            None => Value::String(c.text),
            Some(name) => {
                let cm = &m.maps[name];
                let Some((code, display)) = cm.codes.get(&c.text) else {
                    let mut known: Vec<&str> = cm.codes.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    return Err((IssueType::CodeInvalid, format!("unknown code {:?} (map '{name}' knows {})", c.text, known.join(", "))));
                };
                match &cm.system {
                    None => Value::String(code.clone()),
                    Some(system) => {
                        let mut coding = Map::new();
                        coding.insert("system".into(), Value::String(system.clone()));
                        if let Some(v) = &cm.version {
                            coding.insert("version".into(), Value::String(v.clone()));
                        }
                        coding.insert("code".into(), Value::String(code.clone()));
                        if let Some(d) = display {
                            coding.insert("display".into(), Value::String(d.clone()));
                        }
                        Value::Object(coding)
                    }
                }
            }
        },
        Conv::Date(f) => Value::String(convert::date(&c.text, f).map_err(bad)?),
        Conv::DateTime(f) => Value::String(convert::datetime(&c.text, f, &m.zone).map_err(bad)?),
        Conv::Decimal(locale) => {
            let text = if c.number { c.text } else { convert::decimal(&c.text, *locale).map_err(bad)? };
            Value::Number(text.parse::<Number>().map_err(|_| bad(format!("{text:?} is not a decimal")))?)
        }
        Conv::Integer => Value::Number(convert::integer(&c.text).map_err(bad)?.into()),
        Conv::Boolean => Value::Bool(convert::boolean(&c.text).map_err(bad)?),
    };
    Ok(Some(v))
}

/// A resource of a group and the rows it was made from.
struct Built {
    rtype: String,
    id: String,
    res: Map<String, Value>,
    rows: Vec<usize>,
}

/// A group under construction: resources by `Type/id` in first-seen order.
struct GroupBuilder {
    key: String,
    rows: Vec<usize>,
    resources: Vec<Built>,
    index: HashMap<String, usize>,
}

impl GroupBuilder {
    fn new(key: String) -> Self {
        GroupBuilder { key, rows: vec![], resources: vec![], index: HashMap::new() }
    }

    fn add_row(&mut self, row: usize, resources: Vec<(String, String, Map<String, Value>)>, issues: &mut Vec<RowIssue>) {
        self.rows.push(row);
        for (rtype, id, res) in resources {
            let k = format!("{rtype}/{id}");
            match self.index.get(&k) {
                None => {
                    self.index.insert(k, self.resources.len());
                    self.resources.push(Built { rtype, id, res, rows: vec![row] });
                }
                Some(&i) => {
                    let Built { res: existing, rows, .. } = &mut self.resources[i];
                    rows.push(row);
                    for (name, v) in res {
                        match existing.get(&name) {
                            None => {
                                existing.insert(name, v);
                            }
                            Some(old) if *old != v => issues.push(RowIssue {
                                row: Some(row),
                                column: None,
                                severity: Severity::Warning,
                                code: IssueType::Conflict,
                                message: format!("{rtype}.{name} differs from row {}; the earlier row's value is kept", rows[0]),
                            }),
                            Some(_) => {}
                        }
                    }
                }
            }
        }
    }

    fn finish(self, m: &Mapping, org: &Value, org_id: &str, input: &Input<'_>, sha256: &str, received_at: &str) -> Group {
        let mut entries = Vec::with_capacity(self.resources.len() + 2);
        let mut entry_rows = Vec::with_capacity(self.resources.len() + 2);
        let mut targets = Vec::with_capacity(self.resources.len() + 1);
        if m.member.is_none() {
            entries.push(entry("Organization", org_id, org.clone()));
            entry_rows.push(self.rows.clone());
            targets.push(reference(&format!("Organization/{org_id}")));
        }
        for Built { rtype, id, res, rows } in self.resources {
            targets.push(reference(&format!("{rtype}/{id}")));
            entries.push(entry(&rtype, &id, Value::Object(res)));
            entry_rows.push(rows);
        }
        let prov_id = resource_id(&m.institution, "Provenance", &format!("import|{sha256}|{}", self.key));
        let prov = provenance(&prov_id, targets, org_id, input, sha256, &self.rows, received_at);
        entries.push(entry("Provenance", &prov_id, prov));
        entry_rows.push(self.rows.clone());
        let bundle = Value::Object(Map::from_iter([
            ("resourceType".to_owned(), Value::String("Bundle".into())),
            ("type".to_owned(), Value::String("transaction".into())),
            ("entry".to_owned(), Value::Array(entries)),
        ]));
        Group { key: self.key, rows: self.rows, bundle, entry_rows }
    }
}

fn reference(r: &str) -> Value {
    Value::Object(Map::from_iter([("reference".to_owned(), Value::String(r.to_owned()))]))
}

fn entry(rtype: &str, id: &str, res: Value) -> Value {
    serde_json::json!({
        "fullUrl": format!("urn:uuid:{id}"),
        "resource": res,
        "request": {"method": "PUT", "url": format!("{rtype}/{id}")},
    })
}

/// The member institution's Organization.
fn organization(m: &Mapping) -> Value {
    let mut identifiers = vec![serde_json::json!({"system": "urn:carebridge:institution", "value": m.institution})];
    if let Some((system, value)) = &m.organization_identifier {
        identifiers.push(serde_json::json!({"system": system, "value": value}));
    }
    let mut org = serde_json::json!({
        "resourceType": "Organization",
        "id": m.organization_id(),
        "identifier": identifiers,
        "active": true,
        "name": m.organization_name,
    });
    prune(&mut org);
    org
}

/// `2–4, 7, 9–10`
pub fn row_ranges(rows: &[usize]) -> String {
    let mut out: Vec<String> = vec![];
    let mut i = 0;
    while i < rows.len() {
        let start = rows[i];
        let mut end = start;
        while i + 1 < rows.len() && rows[i + 1] == end + 1 {
            i += 1;
            end = rows[i];
        }
        out.push(if end == start { start.to_string() } else { format!("{start}–{end}") });
        i += 1;
    }
    out.join(", ")
}

fn provenance(id: &str, targets: Vec<Value>, org_id: &str, input: &Input<'_>, sha256: &str, rows: &[usize], received_at: &str) -> Value {
    let mut p = serde_json::json!({
        "resourceType": "Provenance",
        "id": id,
        "target": targets,
        "recorded": received_at,
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "CREATE"}]},
        "agent": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "author", "display": "Author"}]},
            "who": reference(&format!("Organization/{org_id}")),
        }],
        "entity": [{
            "role": "source",
            "what": {
                "identifier": {"system": "urn:carebridge:import:sha256", "value": sha256},
                "display": format!("{} export {}, {} {}", input.format.as_str(), input.file_name, if rows.len() == 1 { "row" } else { "rows" }, row_ranges(rows)),
            },
        }],
    });
    prune(&mut p);
    p
}

/// Sets `activity` (`CREATE`/`UPDATE`) and `recorded` of a Provenance built
/// by [`translate`] (the ingest layer knows what existed before).
pub fn set_provenance_activity(prov: &mut Value, activity: &str, recorded: Option<&str>) {
    if let Some(c) = prov.pointer_mut("/activity/coding/0") {
        c["code"] = Value::String(activity.to_owned());
    }
    if let Some(r) = recorded {
        prov["recorded"] = Value::String(r.to_owned());
    }
}

#[cfg(test)]
mod tests;
