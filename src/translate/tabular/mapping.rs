//! Mapping files: `mappings/<institution>.toml` plus the JSON Schema it
//! ships (`<institution>.schema.json`), parsed and checked once at start.
//!
//! The format is documented in README.md ("CSV / JSON import") and in the
//! `tabular` module documentation. Everything a mapping names is checked
//! here, so a typo is a start-up error with file and line, never a surprise
//! on the first upload: every column a field, key, group or condition uses
//! must be a property of the schema; maps and resource names must exist;
//! element paths, date formats, locales, time zones and delimiters must
//! parse; the schema must compile (JSON Schema 2020-12 by default, or the
//! draft its `$schema` names — `jsonschema` crate, no remote `$ref`s).

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::convert::{DateFormat, Locale};
use super::path::ElementPath;
use crate::translate::hl7v2::Zone;
use crate::translate::ids::resource_id;

/// A mapping file that cannot be used: file, line (when known) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct MappingError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

/// Input formats a mapping accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Csv => "CSV",
            Format::Json => "JSON",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CsvInput {
    pub delimiter: u8,
    /// ISO 8859-1 instead of UTF-8
    pub latin1: bool,
}

#[derive(Debug, Clone)]
pub struct JsonInput {
    /// JSON pointer to the array of records (`""` = the document itself)
    pub records: String,
}

/// `{column}` placeholders between literal text.
#[derive(Debug, Clone)]
pub struct Template {
    pub parts: Vec<TPart>,
}

#[derive(Debug, Clone)]
pub enum TPart {
    Lit(String),
    Col(String),
}

impl Template {
    fn parse(s: &str) -> Result<Template, String> {
        let mut parts = vec![];
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(TPart::Lit(rest[..open].to_owned()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("unclosed '{{' in template {s:?}"));
            };
            let col = rest[open + 1..open + close].trim();
            if col.is_empty() {
                return Err(format!("empty '{{}}' in template {s:?}"));
            }
            parts.push(TPart::Col(col.to_owned()));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("unmatched '}}' in template {s:?}"));
        }
        if !rest.is_empty() {
            parts.push(TPart::Lit(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            TPart::Col(c) => Some(c.as_str()),
            TPart::Lit(_) => None,
        })
    }
}

/// Local code → target code (and display), with the target system.
#[derive(Debug, Clone)]
pub struct CodeMap {
    pub system: Option<String>,
    pub version: Option<String>,
    pub codes: HashMap<String, (String, Option<String>)>,
}

/// When a resource is made from a row.
#[derive(Debug, Clone)]
pub enum When {
    /// the column has a value
    Present(String),
    /// the column has exactly this value
    Equals(String, String),
}

/// How a column's text becomes a FHIR value.
#[derive(Debug, Clone)]
pub enum Conv {
    Text,
    Date(DateFormat),
    DateTime(DateFormat),
    Decimal(Locale),
    Integer,
    Boolean,
}

#[derive(Debug, Clone)]
pub enum Source {
    Const(Value),
    Template(Template),
    Column { column: String, conv: Conv, map: Option<String> },
    /// `{"reference": "Type/id"}` of another resource of the same row
    Reference(usize),
}

#[derive(Debug, Clone)]
pub struct FieldDef {
    pub path: ElementPath,
    pub source: Source,
}

#[derive(Debug, Clone)]
pub struct ResourceDef {
    pub name: String,
    pub rtype: String,
    pub key: Template,
    pub when: Option<When>,
    pub fields: Vec<FieldDef>,
}

/// One institution's compiled mapping.
pub struct Mapping {
    /// the institution id (file name without `.toml`); part of every resource id
    pub institution: String,
    pub organization_name: String,
    /// the network member (`[[auth.member]]` id) the institution belongs to
    /// (`[institution] member`): when set, the Provenance's agent is
    /// `Organization/<member>` and no Organization of the institution is
    /// written (the member's is the network's registry record)
    pub member: Option<String>,
    /// extra `Organization.identifier` (e.g. the IKNR)
    pub organization_identifier: Option<(String, String)>,
    pub zone: Zone,
    pub csv: Option<CsvInput>,
    pub json: Option<JsonInput>,
    pub group: Template,
    pub schema: jsonschema::Validator,
    /// the schema's top-level `required` properties (CSV header check)
    pub required_columns: Vec<String>,
    pub maps: HashMap<String, CodeMap>,
    pub resources: Vec<ResourceDef>,
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping").field("institution", &self.institution).finish_non_exhaustive()
    }
}

impl Mapping {
    /// `Organization/<id>` of the institution: the member's id when it is
    /// mapped to one, else the same id the HL7 v2 translator gives it
    /// (`UUIDv5(institution|Organization|institution)`).
    pub fn organization_id(&self) -> String {
        match &self.member {
            Some(m) => m.clone(),
            None => resource_id(&self.institution, "Organization", "institution"),
        }
    }

    pub fn accepts(&self, f: Format) -> bool {
        match f {
            Format::Csv => self.csv.is_some(),
            Format::Json => self.json.is_some(),
        }
    }

    /// Parse and check a mapping. `file` names the TOML file in errors,
    /// `schema_file`/`schema_text` the JSON Schema it names (the caller
    /// reads it: see [`Mapping::schema_file`]).
    pub fn parse(institution: &str, file: &str, text: &str, schema_file: &str, schema_text: &str) -> Result<Mapping, MappingError> {
        let err = |span: Option<std::ops::Range<usize>>, message: String| MappingError {
            file: file.to_owned(),
            line: span.map(|s| line_of(text, s.start)),
            message,
        };
        if institution.is_empty() || !institution.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            return Err(err(None, format!("institution id {institution:?} (the file name) must be lower-case letters, digits and '-'")));
        }
        let raw: RawMapping = toml::from_str(text).map_err(|e| MappingError {
            file: file.to_owned(),
            line: e.span().map(|s| line_of(text, s.start)),
            message: e.message().to_owned(),
        })?;

        let schema_json: Value = serde_json::from_str(schema_text).map_err(|e| MappingError {
            file: schema_file.to_owned(),
            line: Some(e.line()),
            message: format!("not JSON: {e}"),
        })?;
        let schema = jsonschema::options().should_validate_formats(true).build(&schema_json).map_err(|e| MappingError {
            file: schema_file.to_owned(),
            line: None,
            message: format!("not a usable JSON Schema: {e}"),
        })?;
        let properties: Vec<String> =
            schema_json.get("properties").and_then(Value::as_object).map(|m| m.keys().cloned().collect()).unwrap_or_default();
        if properties.is_empty() {
            return Err(MappingError {
                file: schema_file.to_owned(),
                line: None,
                message: "the schema declares no top-level \"properties\" (the columns / record fields)".into(),
            });
        }
        let required_columns: Vec<String> = schema_json
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        let known = |col: &str| {
            let top = col.split('.').next().unwrap_or(col);
            properties.iter().any(|p| p == top)
        };
        let check_col = |col: &str, span: std::ops::Range<usize>| -> Result<(), MappingError> {
            if known(col) {
                Ok(())
            } else {
                Err(err(Some(span), format!("column '{col}' is not a property of {schema_file}")))
            }
        };

        // institution
        let zone_name = raw.institution.time_zone.as_ref().map(|s| s.get_ref().as_str()).unwrap_or("Europe/Berlin");
        let zone = Zone::iana(zone_name)
            .map_err(|e| err(raw.institution.time_zone.as_ref().map(Spanned::span), format!("time zone {zone_name:?}: {e}")))?;
        if raw.institution.name.trim().is_empty() {
            return Err(err(None, "[institution] name is empty".into()));
        }

        // input
        let locale = match &raw.input.locale {
            None => Locale::Point,
            Some(s) => Locale::parse(s.get_ref()).ok_or_else(|| err(Some(s.span()), format!("locale {:?}: expected de, da, en, comma or point", s.get_ref())))?,
        };
        let csv = match &raw.input.csv {
            None => None,
            Some(c) => {
                let delimiter = match &c.delimiter {
                    None => b',',
                    Some(d) => match d.get_ref().as_bytes() {
                        [b] if b.is_ascii() && *b != b'"' => *b,
                        _ => return Err(err(Some(d.span()), format!("delimiter {:?} must be one ASCII character", d.get_ref()))),
                    },
                };
                let latin1 = match c.encoding.as_ref().map(|e| (e.get_ref().to_ascii_lowercase(), e.span())) {
                    None => false,
                    Some((e, _)) if e == "utf-8" || e == "utf8" => false,
                    Some((e, _)) if e == "latin1" || e == "iso-8859-1" => true,
                    Some((e, span)) => return Err(err(Some(span), format!("encoding {e:?}: expected utf-8 or latin1"))),
                };
                Some(CsvInput { delimiter, latin1 })
            }
        };
        let json = match &raw.input.json {
            None => None,
            Some(j) => {
                let records = j.records.as_ref().map(|r| r.get_ref().clone()).unwrap_or_default();
                if !records.is_empty() && !records.starts_with('/') {
                    return Err(err(j.records.as_ref().map(Spanned::span), format!("records {records:?} must be a JSON pointer ('/…' or '')")));
                }
                Some(JsonInput { records })
            }
        };
        if csv.is_none() && json.is_none() {
            return Err(err(None, "[input] needs a csv and/or a json table (which formats the institution sends)".into()));
        }
        let group = Template::parse(raw.input.group.get_ref()).map_err(|m| err(Some(raw.input.group.span()), m))?;
        if group.columns().next().is_none() {
            return Err(err(Some(raw.input.group.span()), "group template names no column".into()));
        }
        for c in group.columns() {
            check_col(c, raw.input.group.span())?;
        }

        // maps
        let mut maps = HashMap::new();
        for (name, m) in raw.maps {
            if m.codes.is_empty() {
                return Err(err(None, format!("map '{name}' has no codes")));
            }
            let codes = m
                .codes
                .into_iter()
                .map(|(k, v)| match v {
                    RawCode::Code(c) => (k, (c, None)),
                    RawCode::Full { code, display } => (k, (code, display)),
                })
                .collect();
            maps.insert(name, CodeMap { system: m.system, version: m.version, codes });
        }

        // resources
        let names: Vec<String> = raw.resource.iter().map(|r| r.name.get_ref().clone()).collect();
        if names.is_empty() {
            return Err(err(None, "no [[resource]] defined".into()));
        }
        let mut resources = Vec::with_capacity(raw.resource.len());
        for (ri, r) in raw.resource.iter().enumerate() {
            if names[..ri].contains(r.name.get_ref()) {
                return Err(err(Some(r.name.span()), format!("resource name '{}' is used twice", r.name.get_ref())));
            }
            let rtype = r.rtype.get_ref();
            if !rtype.starts_with(|c: char| c.is_ascii_uppercase()) || !rtype.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(err(Some(r.rtype.span()), format!("{rtype:?} is not a FHIR resource type name")));
            }
            if rtype == "Provenance" {
                return Err(err(Some(r.rtype.span()), "the Provenance is written by the importer itself".into()));
            }
            let key = Template::parse(r.key.get_ref()).map_err(|m| err(Some(r.key.span()), m))?;
            if key.columns().next().is_none() {
                return Err(err(Some(r.key.span()), "key template names no column (every row would make the same resource)".into()));
            }
            for c in key.columns() {
                check_col(c, r.key.span())?;
            }
            let when = match &r.when {
                None => None,
                Some(w) => {
                    let s = w.get_ref();
                    let wh = match s.split_once('=') {
                        Some((c, v)) => When::Equals(c.trim().to_owned(), v.trim().to_owned()),
                        None => When::Present(s.trim().to_owned()),
                    };
                    let col = match &wh {
                        When::Present(c) | When::Equals(c, _) => c,
                    };
                    check_col(col, w.span())?;
                    Some(wh)
                }
            };
            let mut fields = Vec::with_capacity(r.fields.len());
            for f in &r.fields {
                let fspan = f.span();
                let f = f.get_ref();
                let path = ElementPath::parse(f.path.get_ref()).map_err(|m| err(Some(f.path.span()), m))?;
                let n_sources = [f.column.is_some(), f.value.is_some(), f.template.is_some(), f.reference.is_some()]
                    .iter()
                    .filter(|b| **b)
                    .count();
                if n_sources != 1 {
                    return Err(err(Some(fspan), format!("field '{}' needs exactly one of column, value, template, reference", f.path.get_ref())));
                }
                if f.column.is_none() && (f.kind.is_some() || f.format.is_some() || f.map.is_some() || f.locale.is_some()) {
                    return Err(err(Some(fspan), "type, format, map and locale apply to column fields only".into()));
                }
                let source = if let Some(c) = &f.column {
                    check_col(c.get_ref(), c.span())?;
                    let kind = f.kind.as_ref().map(|k| k.get_ref().as_str()).unwrap_or("string");
                    let fmt = || -> Result<DateFormat, MappingError> {
                        let Some(s) = &f.format else {
                            return Err(err(Some(fspan.clone()), format!("type {kind} needs a format (e.g. \"dd.MM.yyyy\" or \"iso\")")));
                        };
                        DateFormat::parse(s.get_ref()).map_err(|m| err(Some(s.span()), m))
                    };
                    let field_locale = match &f.locale {
                        None => locale,
                        Some(s) => Locale::parse(s.get_ref()).ok_or_else(|| err(Some(s.span()), format!("locale {:?}: expected de, da, en, comma or point", s.get_ref())))?,
                    };
                    let conv = match kind {
                        "string" | "code" => Conv::Text,
                        "date" => Conv::Date(fmt()?),
                        "dateTime" => Conv::DateTime(fmt()?),
                        "decimal" => Conv::Decimal(field_locale),
                        "integer" => Conv::Integer,
                        "boolean" => Conv::Boolean,
                        other => {
                            return Err(err(
                                f.kind.as_ref().map(Spanned::span),
                                format!("type {other:?}: expected string, code, date, dateTime, decimal, integer or boolean"),
                            ))
                        }
                    };
                    if f.format.is_some() && !matches!(conv, Conv::Date(_) | Conv::DateTime(_)) {
                        return Err(err(Some(fspan), "format applies to date and dateTime fields only".into()));
                    }
                    let map = match &f.map {
                        None => None,
                        Some(m) if !maps.contains_key(m.get_ref()) => {
                            return Err(err(Some(m.span()), format!("unknown map '{}'", m.get_ref())))
                        }
                        Some(_) if !matches!(conv, Conv::Text) => {
                            return Err(err(Some(fspan), "map applies to string/code fields only".into()))
                        }
                        Some(m) => Some(m.get_ref().clone()),
                    };
                    Source::Column { column: c.get_ref().clone(), conv, map }
                } else if let Some(v) = &f.value {
                    let v = toml_to_json(v).map_err(|m| err(Some(fspan), m))?;
                    Source::Const(v)
                } else if let Some(t) = &f.template {
                    let tpl = Template::parse(t.get_ref()).map_err(|m| err(Some(t.span()), m))?;
                    for c in tpl.columns() {
                        check_col(c, t.span())?;
                    }
                    Source::Template(tpl)
                } else {
                    let target = f.reference.as_ref().expect("one source");
                    match names.iter().position(|n| n == target.get_ref()) {
                        Some(i) if i != ri => Source::Reference(i),
                        Some(_) => return Err(err(Some(target.span()), "a resource cannot reference itself".into())),
                        None => return Err(err(Some(target.span()), format!("reference to unknown resource name '{}'", target.get_ref()))),
                    }
                };
                fields.push(FieldDef { path, source });
            }
            resources.push(ResourceDef { name: r.name.get_ref().clone(), rtype: rtype.clone(), key, when, fields });
        }
        let org_identifier = raw.institution.identifier.map(|i| (i.system, i.value));
        if let Some(m) = &raw.institution.member {
            if !crate::fhir::is_valid_id(m.get_ref()) {
                return Err(err(Some(m.span()), format!("[institution] member {:?} is not a FHIR id", m.get_ref())));
            }
        }
        Ok(Mapping {
            institution: institution.to_owned(),
            organization_name: raw.institution.name,
            member: raw.institution.member.map(Spanned::into_inner),
            organization_identifier: org_identifier,
            zone,
            csv,
            json,
            group,
            schema,
            required_columns,
            maps,
            resources,
        })
    }

    /// The schema file a mapping names (`[input] schema`, default
    /// `<institution>.schema.json`), relative to the mapping's folder.
    pub fn schema_file(institution: &str, text: &str) -> String {
        #[derive(Deserialize)]
        struct Peek {
            input: Option<PeekInput>,
        }
        #[derive(Deserialize)]
        struct PeekInput {
            schema: Option<String>,
        }
        toml::from_str::<Peek>(text)
            .ok()
            .and_then(|p| p.input)
            .and_then(|i| i.schema)
            .unwrap_or_else(|| format!("{institution}.schema.json"))
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1
}

fn toml_to_json(v: &toml::Value) -> Result<Value, String> {
    Ok(match v {
        toml::Value::String(s) if s.trim().is_empty() => return Err("empty string value".into()),
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::Number((*i).into()),
        toml::Value::Float(f) => {
            let n: serde_json::Number = f.to_string().parse().map_err(|_| format!("value {f} is not a JSON number"))?;
            Value::Number(n)
        }
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) if a.is_empty() => return Err("empty array value".into()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_to_json).collect::<Result<_, _>>()?),
        toml::Value::Table(t) if t.is_empty() => return Err("empty table value".into()),
        toml::Value::Table(t) => {
            let mut m = serde_json::Map::new();
            for (k, v) in t {
                m.insert(k.clone(), toml_to_json(v)?);
            }
            Value::Object(m)
        }
    })
}

// -- the TOML shape ------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    institution: RawInstitution,
    input: RawInput,
    #[serde(default)]
    maps: BTreeMap<String, RawMap>,
    #[serde(default)]
    resource: Vec<RawResource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstitution {
    name: String,
    time_zone: Option<Spanned<String>>,
    identifier: Option<RawIdentifier>,
    member: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentifier {
    system: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    #[allow(dead_code)] // read by `Mapping::schema_file`
    schema: Option<String>,
    locale: Option<Spanned<String>>,
    group: Spanned<String>,
    csv: Option<RawCsv>,
    json: Option<RawJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCsv {
    delimiter: Option<Spanned<String>>,
    encoding: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJson {
    records: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMap {
    system: Option<String>,
    version: Option<String>,
    codes: BTreeMap<String, RawCode>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawCode {
    Code(String),
    Full { code: String, display: Option<String> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    name: Spanned<String>,
    #[serde(rename = "type")]
    rtype: Spanned<String>,
    key: Spanned<String>,
    when: Option<Spanned<String>>,
    #[serde(default)]
    fields: Vec<Spanned<RawField>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    path: Spanned<String>,
    column: Option<Spanned<String>>,
    value: Option<toml::Value>,
    template: Option<Spanned<String>>,
    reference: Option<Spanned<String>>,
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    map: Option<Spanned<String>>,
    locale: Option<Spanned<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{"type":"object","required":["id"],"properties":{"id":{"type":"string"},"d":{"type":"string"}}}"#;

    fn parse(toml: &str) -> Result<Mapping, MappingError> {
        Mapping::parse("inst-1", "mappings/inst-1.toml", toml, "mappings/inst-1.schema.json", SCHEMA)
    }

    const GOOD: &str = r#"[institution]
name = "X"
[input]
group = "{id}"
csv = { delimiter = ";" }
[[resource]]
name = "p"
type = "Patient"
key = "{id}"
fields = [
  { path = "identifier[0].value", column = "id" },
  { path = "birthDate", column = "d", type = "date", format = "dd.MM.yyyy" },
]
"#;

    #[test]
    fn parses_good_mapping() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.resources.len(), 1);
        assert_eq!(m.csv.as_ref().unwrap().delimiter, b';');
        assert_eq!(m.required_columns, vec!["id".to_owned()]);
        assert!(m.accepts(Format::Csv) && !m.accepts(Format::Json));
    }

    #[test]
    fn errors_name_file_and_line() {
        let bad = GOOD.replace("column = \"d\"", "column = \"dd\"");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.line, Some(12), "{e}");
        assert!(e.to_string().starts_with("mappings/inst-1.toml:12: column 'dd'"), "{e}");
        let bad = GOOD.replace("format = \"dd.MM.yyyy\"", "format = \"DD.MM.YYYY\"");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.line, Some(12), "{e}");
        let bad = GOOD.replace("name = \"X\"", "name = \"X\"\ncolour = 1");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("colour"), "{e}");
        let bad = GOOD.replace("{ path = \"identifier[0].value\", column = \"id\" }", "{ path = \"identifier[0].value\", column = \"id\", map = \"nope\" }");
        assert!(parse(&bad).unwrap_err().message.contains("unknown map 'nope'"));
        let bad = GOOD.replace("identifier[0].value", "identifier[x].value");
        assert_eq!(parse(&bad).unwrap_err().line, Some(11));
        let e = Mapping::parse("inst-1", "m.toml", GOOD, "s.json", "{\"type\":\"object\",").unwrap_err();
        assert_eq!(e.file, "s.json");
        assert!(Mapping::parse("Inst", "m.toml", GOOD, "s.json", SCHEMA).is_err());
        let bad = GOOD.replace("name = \"X\"", "name = \"X\"\nmember = \"a b\"");
        assert_eq!(parse(&bad).unwrap_err().line, Some(3));
    }

    #[test]
    fn member_names_the_organization() {
        let plain = parse(GOOD).unwrap();
        assert_eq!(plain.member, None);
        assert_ne!(plain.organization_id(), "pflege-1");
        let m = parse(&GOOD.replace("name = \"X\"", "name = \"X\"\nmember = \"pflege-1\"")).unwrap();
        assert_eq!(m.member.as_deref(), Some("pflege-1"));
        assert_eq!(m.organization_id(), "pflege-1");
    }

    #[test]
    fn schema_file_default_and_override() {
        assert_eq!(Mapping::schema_file("a", GOOD), "a.schema.json");
        assert_eq!(Mapping::schema_file("a", "[input]\nschema = \"x.json\"\n"), "x.json");
    }
}
