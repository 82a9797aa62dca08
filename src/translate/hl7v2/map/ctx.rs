//! The translation context: the bundle being built, errors and warnings, and
//! the small helpers every segment mapper uses (ids, references, dates).
//!
//! # Entries
//! Resources are collected in insertion order, keyed by `Type/id`. Adding a
//! resource whose `Type/id` is already present (the same practitioner named
//! in PV1-7 and PV1-17, the same ward for two beds) keeps the first one and
//! only fills in top-level elements it lacks, so a transaction never
//! changes one resource twice (the pipeline rejects that). Each resource is
//! checked for empty values when added and pruned ([`super::prune`]) only
//! if it has any (builders skip blanks, so that is rare); one that is empty afterwards
//! (nothing but `resourceType` and `id`) is not added and gets no
//! reference, so nothing can point at it.
//!
//! # Dates
//! [`Ctx::datetime`], [`Ctx::date`] and [`Ctx::instant`] parse a v2 DTM/TS/DT
//! value strictly (`datetime` module) after trimming ASCII white space
//! (senders pad fields), use the institution's time zone for values without
//! an offset, and record an error with code 102 and the exact location for
//! an impossible value; the caller just gets `None` and carries on, so one
//! run reports every bad date of a message.

use serde_json::{Map, Value};

use super::ids::resource_id;
use super::prune::{has_empty, prune};
use super::InstitutionConfig;
use crate::translate::hl7v2::{AckError, Hl7DateTime, Location, Message, Segment, Severity};

/// One bundle entry: a resource to PUT, or (resource `None`) a DELETE.
pub(crate) struct Entry {
    pub rtype: &'static str,
    pub id: String,
    pub resource: Option<Value>,
}

pub(crate) struct Ctx<'x, 'a> {
    pub cfg: &'x InstitutionConfig,
    pub msg: &'x Message<'a>,
    pub trigger: String,
    pub control_id: String,
    /// In insertion order; looked up by a linear scan over (type, id):
    /// a message makes a few dozen resources, and a scan with early
    /// mismatches is cheaper than formatting and SipHashing a key per add.
    entries: Vec<Entry>,
    pub errors: Vec<AckError>,
    pub warnings: Vec<AckError>,
    /// `Organization/<id>` of the member institution.
    pub org_ref: String,
}

impl<'x, 'a> Ctx<'x, 'a> {
    pub fn new(
        cfg: &'x InstitutionConfig,
        msg: &'x Message<'a>,
        trigger: &str,
        control_id: String,
    ) -> Self {
        Ctx {
            cfg,
            msg,
            trigger: trigger.to_owned(),
            control_id,
            entries: Vec::with_capacity(12),
            errors: Vec::new(),
            warnings: Vec::new(),
            org_ref: cfg.org_ref(),
        }
    }

    /// The deterministic id for `rtype` and business `key` ([`resource_id`]).
    pub fn id(&self, rtype: &str, key: &str) -> String {
        resource_id(&self.cfg.institution_id, rtype, key)
    }

    /// Adds (or completes) a resource; returns its reference object
    /// `{"reference": "Type/id"}`, or `None` when the resource was empty.
    pub fn add(&mut self, rtype: &'static str, id: &str, mut resource: Value) -> Option<Value> {
        // The builders (`json::put`, `obj!`) leave out blanks as they go, so
        // the pruning walk, which rebuilds maps, only runs when the cheap
        // read-only check finds something.
        if has_empty(&resource) {
            prune(&mut resource);
        }
        let Value::Object(map) = resource else {
            return None;
        };
        if !map.keys().any(|k| k != "resourceType" && k != "id") {
            return None;
        }
        let key = type_id(rtype, id);
        match self.position(rtype, id) {
            Some(i) => match &mut self.entries[i].resource {
                Some(Value::Object(existing)) => {
                    for (k, v) in map {
                        if !existing.contains_key(&k) {
                            existing.insert(k, v);
                        }
                    }
                }
                // A DELETE of the same resource earlier in the message: the
                // later content wins.
                slot @ None => *slot = Some(Value::Object(map)),
                Some(_) => {}
            },
            None => {
                self.entries.push(Entry {
                    rtype,
                    id: id.to_owned(),
                    resource: Some(Value::Object(map)),
                });
            }
        }
        Some(reference(key))
    }

    /// Adds a DELETE entry (unless the resource is already in the bundle).
    pub fn delete(&mut self, rtype: &'static str, id: &str) {
        if self.position(rtype, id).is_some() {
            return;
        }
        self.entries.push(Entry {
            rtype,
            id: id.to_owned(),
            resource: None,
        });
    }

    /// Mutable access to a resource already added (to attach notes etc.).
    pub fn resource_mut(&mut self, rtype: &str, id: &str) -> Option<&mut Map<String, Value>> {
        let i = self.position(rtype, id)?;
        match &mut self.entries[i].resource {
            Some(Value::Object(m)) => Some(m),
            _ => None,
        }
    }

    fn position(&self, rtype: &str, id: &str) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.id == id && e.rtype == rtype)
    }

    pub fn into_entries(self) -> (Vec<Entry>, Vec<AckError>, Vec<AckError>) {
        (self.entries, self.errors, self.warnings)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn org_reference(&self) -> Value {
        reference(self.org_ref.clone())
    }

    // -- errors ----------------------------------------------------------

    /// The index of the first `id` segment in `segs`; when there is none,
    /// records error 100 (segment sequence error) at that segment and
    /// returns `None`, so the mapper stops.
    pub fn require(&mut self, segs: &[Segment<'_, '_>], id: &str, text: &str) -> Option<usize> {
        let i = segs.iter().position(|s| s.id() == id);
        if i.is_none() {
            self.error(100, Some(Location::segment(id, 1)), text);
        }
        i
    }

    pub fn error(&mut self, code: u16, loc: Option<Location>, text: impl Into<String>) {
        let mut e = AckError::new(code, Severity::Error).message(text);
        e.location = loc;
        self.push_error(e);
    }

    /// Records an error once (a value read by two mappers, such as EVN-6,
    /// is reported once).
    pub fn push_error(&mut self, e: AckError) {
        if !self.errors.contains(&e) {
            self.errors.push(e);
        }
    }

    pub fn warn(&mut self, code: u16, loc: Option<Location>, text: impl Into<String>) {
        let mut e = AckError::new(code, Severity::Warning).message(text);
        e.location = loc;
        self.warnings.push(e);
    }

    // -- dates -----------------------------------------------------------

    fn parse_dt(&mut self, raw: &str, loc: &Location) -> Option<Hl7DateTime> {
        let v = raw.trim_matches(|c: char| c.is_ascii_whitespace());
        if v.is_empty() || v == "\"\"" {
            return None;
        }
        match Hl7DateTime::parse(v) {
            Ok(d) => Some(d),
            Err(e) => {
                let err = e.at(loc);
                self.push_error(AckError::from(&err));
                None
            }
        }
    }

    /// FHIR `dateTime` (precision kept, sender's zone for local times).
    pub fn datetime(&mut self, raw: &str, loc: Location) -> Option<String> {
        let d = self.parse_dt(raw, &loc)?;
        match d.to_fhir_datetime(&self.cfg.time_zone) {
            Ok(s) => Some(s),
            Err(e) => {
                self.push_error(AckError::from(&e.at(&loc)));
                None
            }
        }
    }

    /// FHIR `date` (a time part is cut off as written).
    pub fn date(&mut self, raw: &str, loc: Location) -> Option<String> {
        self.parse_dt(raw, &loc).map(|d| d.to_fhir_date())
    }

    /// FHIR `instant`; a value without a time of day gives a warning and `None`.
    pub fn instant(&mut self, raw: &str, loc: Location) -> Option<String> {
        let d = self.parse_dt(raw, &loc)?;
        if !d.has_time() {
            self.warn(
                102,
                Some(loc),
                format!("{raw:?} has no time of day; a FHIR instant needs one, so it is left out"),
            );
            return None;
        }
        match d.to_fhir_instant(&self.cfg.time_zone) {
            Ok(s) => Some(s),
            Err(e) => {
                self.push_error(AckError::from(&e.at(&loc)));
                None
            }
        }
    }

    /// Parses a value and returns both the date and (if it has a time) the
    /// dateTime form: used for birth dates (`birthDate` + `patient-birthTime`).
    pub fn date_and_time(&mut self, raw: &str, loc: Location) -> Option<(String, Option<String>)> {
        let d = self.parse_dt(raw, &loc)?;
        let date = d.to_fhir_date();
        if !d.has_time() {
            return Some((date, None));
        }
        match d.to_fhir_datetime(&self.cfg.time_zone) {
            Ok(t) => Some((date, Some(t))),
            Err(e) => {
                self.push_error(AckError::from(&e.at(&loc)));
                None
            }
        }
    }
}

/// `Type/id` without `format!`.
pub(crate) fn type_id(rtype: &str, id: &str) -> String {
    let mut s = String::with_capacity(rtype.len() + 1 + id.len());
    s.push_str(rtype);
    s.push('/');
    s.push_str(id);
    s
}

/// `{"reference": "Type/id"}`.
pub(crate) fn reference(r: String) -> Value {
    let mut m = Map::with_capacity(1);
    m.insert("reference".into(), Value::String(r));
    Value::Object(m)
}
