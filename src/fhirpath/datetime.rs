//! Partial date / date-time / time values (FHIRPath System.Date, System.DateTime, System.Time).
//!
//! Small self-contained calendar logic (proleptic Gregorian, no leap seconds).

use std::cmp::Ordering;
use std::fmt::Write;

/// Precision of a date/time value. `Year..=Day` for dates, `Hour..=Millisecond` for times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DtPrecision {
    /// `YYYY`
    Year = 0,
    /// `YYYY-MM`
    Month = 1,
    /// `YYYY-MM-DD`
    Day = 2,
    /// `Thh`
    Hour = 3,
    /// `Thh:mm`
    Minute = 4,
    /// `Thh:mm:ss`
    Second = 5,
    /// `Thh:mm:ss.fff`
    Millisecond = 6,
}

/// A (possibly partial) date or date-time. Also used for System.Date (precision <= Day, no tz).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DateTimeValue {
    /// Year (0001..9999).
    pub year: i32,
    /// Month 1..12 (1 when below month precision).
    pub month: u8,
    /// Day 1..31 (1 when below day precision).
    pub day: u8,
    /// Hour 0..23 (0 when below hour precision).
    pub hour: u8,
    /// Minute 0..59.
    pub minute: u8,
    /// Second 0..59.
    pub second: u8,
    /// Milliseconds 0..999 (extra fraction digits are truncated).
    pub millis: u16,
    /// Precision as written.
    pub precision: DtPrecision,
    /// Offset from UTC in minutes, if given.
    pub tz: Option<i16>,
}

/// A (possibly partial) time of day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimeValue {
    /// Hour 0..23.
    pub hour: u8,
    /// Minute 0..59.
    pub minute: u8,
    /// Second 0..59.
    pub second: u8,
    /// Milliseconds 0..999.
    pub millis: u16,
    /// `Hour..=Millisecond`
    pub precision: DtPrecision,
}

pub(crate) fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

pub(crate) fn days_in_month(y: i32, m: u8) -> u8 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 => {
            if is_leap(y) {
                29
            } else {
                28
            }
        }
        _ => 30,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i32, m: u8, d: u8) -> i64 {
    let y = y as i64 - if m <= 2 { 1 } else { 0 };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

pub(crate) fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    ((y + if m <= 2 { 1 } else { 0 }) as i32, m, d)
}

fn num(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_date_part(s: &str) -> Option<DateTimeValue> {
    let parts: Vec<&str> = s.split('-').collect();
    if parts.is_empty() || parts.len() > 3 || parts[0].len() != 4 {
        return None;
    }
    let year = num(parts[0])? as i32;
    let mut v = DateTimeValue { year, month: 1, day: 1, hour: 0, minute: 0, second: 0, millis: 0, precision: DtPrecision::Year, tz: None };
    if parts.len() >= 2 {
        if parts[1].len() != 2 {
            return None;
        }
        let m = num(parts[1])?;
        if !(1..=12).contains(&m) {
            return None;
        }
        v.month = m as u8;
        v.precision = DtPrecision::Month;
    }
    if parts.len() == 3 {
        if parts[2].len() != 2 {
            return None;
        }
        let d = num(parts[2])?;
        if d < 1 || d > days_in_month(year, v.month) as u32 {
            return None;
        }
        v.day = d as u8;
        v.precision = DtPrecision::Day;
    }
    Some(v)
}

/// Parses `YYYY`, `YYYY-MM`, `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Option<DateTimeValue> {
    parse_date_part(s)
}

/// Parses `HH(:MM(:SS(.fff)?)?)?` (no timezone).
pub fn parse_time(s: &str) -> Option<TimeValue> {
    let (main, frac) = match s.find('.') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let parts: Vec<&str> = main.split(':').collect();
    if parts.is_empty() || parts.len() > 3 || parts.iter().any(|p| p.len() != 2) {
        return None;
    }
    let hour = num(parts[0])?;
    if hour > 23 {
        return None;
    }
    let mut t = TimeValue { hour: hour as u8, minute: 0, second: 0, millis: 0, precision: DtPrecision::Hour };
    if parts.len() >= 2 {
        let m = num(parts[1])?;
        if m > 59 {
            return None;
        }
        t.minute = m as u8;
        t.precision = DtPrecision::Minute;
    }
    if parts.len() == 3 {
        let sec = num(parts[2])?;
        if sec > 59 {
            return None;
        }
        t.second = sec as u8;
        t.precision = DtPrecision::Second;
    }
    if let Some(f) = frac {
        if parts.len() != 3 || f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut ms = 0u32;
        for (i, c) in f.bytes().take(3).enumerate() {
            ms += (c - b'0') as u32 * [100, 10, 1][i];
        }
        t.millis = ms as u16;
        t.precision = DtPrecision::Millisecond;
    }
    Some(t)
}

fn parse_tz(s: &str) -> Option<i16> {
    if s == "Z" {
        return Some(0);
    }
    let b = s.as_bytes();
    if b.len() != 6 || (b[0] != b'+' && b[0] != b'-') || b[3] != b':' {
        return None;
    }
    let h = num(s.get(1..3)?)? as i16;
    let m = num(s.get(4..6)?)? as i16;
    if h > 14 || m > 59 {
        return None;
    }
    let v = h * 60 + m;
    Some(if b[0] == b'-' { -v } else { v })
}

/// Parses a date-time: `YYYY(-MM(-DD(T(HH(:MM(:SS(.fff)?)?)?)?(tz)?)?)?)?`; a trailing `T` is accepted.
pub fn parse_datetime(s: &str) -> Option<DateTimeValue> {
    let (date, rest) = match s.find('T') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut v = parse_date_part(date)?;
    let rest = match rest {
        None | Some("") => return Some(v),
        Some(r) => r,
    };
    if v.precision != DtPrecision::Day {
        return None;
    }
    // split off timezone
    let tz_start = rest.find(['Z', '+', '-']);
    let (time, tz) = match tz_start {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    let t = parse_time(time)?;
    v.hour = t.hour;
    v.minute = t.minute;
    v.second = t.second;
    v.millis = t.millis;
    v.precision = t.precision;
    if let Some(tz) = tz {
        v.tz = Some(parse_tz(tz)?);
    }
    Some(v)
}

fn fmt_tz(out: &mut String, tz: Option<i16>) {
    if let Some(tz) = tz {
        if tz == 0 {
            out.push('Z');
        } else {
            let sign = if tz < 0 { '-' } else { '+' };
            let a = tz.unsigned_abs();
            let _ = write!(out, "{}{:02}:{:02}", sign, a / 60, a % 60);
        }
    }
}

fn fmt_year(out: &mut String, y: i32) {
    if y < 0 {
        let _ = write!(out, "-{:04}", -y);
    } else {
        let _ = write!(out, "{:04}", y);
    }
}

impl DateTimeValue {
    /// Formats as a date (`YYYY-MM-DD`, truncated to precision).
    pub fn to_date_string(&self) -> String {
        let mut s = String::new();
        fmt_year(&mut s, self.year);
        if self.precision >= DtPrecision::Month {
            let _ = write!(s, "-{:02}", self.month);
        }
        if self.precision >= DtPrecision::Day {
            let _ = write!(s, "-{:02}", self.day);
        }
        s
    }
    /// Formats as an ISO date-time (no trailing `T` for date-only precisions).
    pub fn to_datetime_string(&self) -> String {
        let mut s = self.to_date_string();
        if self.precision >= DtPrecision::Hour {
            let _ = write!(s, "T{:02}", self.hour);
            if self.precision >= DtPrecision::Minute {
                let _ = write!(s, ":{:02}", self.minute);
            }
            if self.precision >= DtPrecision::Second {
                let _ = write!(s, ":{:02}", self.second);
            }
            if self.precision >= DtPrecision::Millisecond {
                let _ = write!(s, ".{:03}", self.millis);
            }
            fmt_tz(&mut s, self.tz);
        }
        s
    }

    /// Converts to UTC by applying the timezone offset (only meaningful for time precisions).
    fn shifted(&self, offset_minutes: i64) -> DateTimeValue {
        let days = days_from_civil(self.year, self.month, self.day);
        let total = days * 1440 + self.hour as i64 * 60 + self.minute as i64 - offset_minutes;
        let nd = total.div_euclid(1440);
        let mins = total.rem_euclid(1440);
        let (y, m, d) = civil_from_days(nd);
        DateTimeValue { year: y, month: m, day: d, hour: (mins / 60) as u8, minute: (mins % 60) as u8, tz: Some(0), ..*self }
    }

    fn components(&self) -> [i64; 6] {
        [
            self.year as i64,
            self.month as i64,
            self.day as i64,
            self.hour as i64,
            self.minute as i64,
            self.second as i64 * 1000 + self.millis as i64,
        ]
    }

    fn ncomp(&self) -> usize {
        match self.precision {
            DtPrecision::Millisecond => 6,
            p => p as usize + 1,
        }
    }

    /// Epoch milliseconds treating missing components as their minimum and ignoring tz.
    pub(crate) fn epoch_millis_local(&self) -> i64 {
        let days = days_from_civil(self.year, self.month, self.day);
        ((days * 24 + self.hour as i64) * 60 + self.minute as i64) * 60_000 + self.second as i64 * 1000 + self.millis as i64
    }

    pub(crate) fn from_epoch_millis_local(ms: i64, precision: DtPrecision, tz: Option<i16>) -> DateTimeValue {
        let days = ms.div_euclid(86_400_000);
        let rem = ms.rem_euclid(86_400_000);
        let (y, m, d) = civil_from_days(days);
        DateTimeValue {
            year: y,
            month: m,
            day: d,
            hour: (rem / 3_600_000) as u8,
            minute: ((rem / 60_000) % 60) as u8,
            second: ((rem / 1000) % 60) as u8,
            millis: (rem % 1000) as u16,
            precision,
            tz,
        }
    }

    /// Truncates to the given precision (resetting lower fields to their minimum).
    pub(crate) fn truncate(&self, p: DtPrecision) -> DateTimeValue {
        let mut v = *self;
        if p < v.precision {
            v.precision = p;
        }
        if v.precision < DtPrecision::Millisecond {
            v.millis = 0;
        }
        if v.precision < DtPrecision::Second {
            v.second = 0;
        }
        if v.precision < DtPrecision::Minute {
            v.minute = 0;
        }
        if v.precision < DtPrecision::Hour {
            v.hour = 0;
            v.tz = None;
        }
        if v.precision < DtPrecision::Day {
            v.day = 1;
        }
        if v.precision < DtPrecision::Month {
            v.month = 1;
        }
        v
    }
}

fn cmp_components(a: &DateTimeValue, b: &DateTimeValue) -> Option<Ordering> {
    let ca = a.components();
    let cb = b.components();
    let na = a.ncomp();
    let nb = b.ncomp();
    let n = na.min(nb);
    for k in 0..n {
        match ca[k].cmp(&cb[k]) {
            Ordering::Equal => {}
            o => return Some(o),
        }
    }
    if na == nb {
        Some(Ordering::Equal)
    } else {
        None
    }
}

/// Partial comparison of two date-times. `None` means "unknown" (different precisions or
/// an undecidable timezone situation).
pub fn compare_datetimes(a: &DateTimeValue, b: &DateTimeValue) -> Option<Ordering> {
    if a.precision >= DtPrecision::Hour && b.precision >= DtPrecision::Hour {
        match (a.tz, b.tz) {
            (Some(ta), Some(tb)) => {
                if ta == tb {
                    cmp_components(a, b)
                } else {
                    cmp_components(&a.shifted(ta as i64), &b.shifted(tb as i64))
                }
            }
            (None, None) => cmp_components(a, b),
            (Some(ta), None) => {
                let au = a.shifted(ta as i64);
                let early = b.shifted(14 * 60);
                let late = b.shifted(-12 * 60);
                let r1 = cmp_components(&au, &early);
                let r2 = cmp_components(&au, &late);
                if r1 == r2 && r1 != Some(Ordering::Equal) {
                    r1
                } else {
                    None
                }
            }
            (None, Some(_)) => compare_datetimes(b, a).map(|o| o.reverse()),
        }
    } else {
        cmp_components(a, b)
    }
}

impl TimeValue {
    /// Formats as `hh(:mm(:ss(.fff)))` (without the `@T` literal prefix).
    pub fn to_time_string(&self) -> String {
        let mut s = format!("{:02}", self.hour);
        if self.precision >= DtPrecision::Minute {
            let _ = write!(s, ":{:02}", self.minute);
        }
        if self.precision >= DtPrecision::Second {
            let _ = write!(s, ":{:02}", self.second);
        }
        if self.precision >= DtPrecision::Millisecond {
            let _ = write!(s, ".{:03}", self.millis);
        }
        s
    }
    fn as_dt(&self) -> DateTimeValue {
        DateTimeValue {
            year: 0,
            month: 1,
            day: 1,
            hour: self.hour,
            minute: self.minute,
            second: self.second,
            millis: self.millis,
            precision: self.precision,
            tz: None,
        }
    }
    fn from_dt(d: &DateTimeValue) -> TimeValue {
        TimeValue { hour: d.hour, minute: d.minute, second: d.second, millis: d.millis, precision: d.precision }
    }
}

pub fn compare_times(a: &TimeValue, b: &TimeValue) -> Option<Ordering> {
    let ca = a.as_dt().components();
    let cb = b.as_dt().components();
    let na = a.as_dt().ncomp();
    let nb = b.as_dt().ncomp();
    for k in 3..na.min(nb) {
        match ca[k].cmp(&cb[k]) {
            Ordering::Equal => {}
            o => return Some(o),
        }
    }
    if na == nb {
        Some(Ordering::Equal)
    } else {
        None
    }
}

/// Calendar unit used in date/time arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CalUnit {
    Year,
    Month,
    Week,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
}

/// Maps a quantity unit usable in date arithmetic. `ucum` is true when the unit was a quoted
/// UCUM code. UCUM `a` and `mo` are rejected (not calendar durations).
pub(crate) fn cal_unit(unit: &str, _ucum: bool) -> Option<CalUnit> {
    Some(match unit {
        "year" | "years" => CalUnit::Year,
        "month" | "months" => CalUnit::Month,
        "week" | "weeks" | "wk" => CalUnit::Week,
        "day" | "days" | "d" => CalUnit::Day,
        "hour" | "hours" | "h" => CalUnit::Hour,
        "minute" | "minutes" | "min" => CalUnit::Minute,
        "second" | "seconds" | "s" => CalUnit::Second,
        "millisecond" | "milliseconds" | "ms" => CalUnit::Millisecond,
        _ => return None,
    })
}

/// Adds `amount` (already truncated to an integer) of `unit` to a date/date-time.
pub(crate) fn add_to_datetime(v: &DateTimeValue, amount: i64, unit: CalUnit) -> Option<DateTimeValue> {
    let mut r = *v;
    match unit {
        CalUnit::Year | CalUnit::Month => {
            let months = if unit == CalUnit::Year { amount.checked_mul(12)? } else { amount };
            let total = (v.year as i64) * 12 + (v.month as i64 - 1) + months;
            let ny = total.div_euclid(12);
            if !(-9999..=9999).contains(&ny) {
                return None;
            }
            r.year = ny as i32;
            r.month = (total.rem_euclid(12) + 1) as u8;
            let dim = days_in_month(r.year, r.month);
            if r.day > dim {
                r.day = dim;
            }
        }
        _ => {
            let ms_per: i64 = match unit {
                CalUnit::Week => 7 * 86_400_000,
                CalUnit::Day => 86_400_000,
                CalUnit::Hour => 3_600_000,
                CalUnit::Minute => 60_000,
                CalUnit::Second => 1000,
                _ => 1,
            };
            let delta = amount.checked_mul(ms_per)?;
            if delta.unsigned_abs() > 400_000 * 366 * 86_400_000u64 {
                return None;
            }
            let ms = v.epoch_millis_local() + delta;
            let n = DateTimeValue::from_epoch_millis_local(ms, v.precision, v.tz);
            r = n.truncate(v.precision);
            r.tz = v.tz;
            if !(-9999..=9999).contains(&r.year) {
                return None;
            }
        }
    }
    Some(r)
}

pub(crate) fn add_to_time(t: &TimeValue, amount: i64, unit: CalUnit) -> Option<TimeValue> {
    let ms_per: i64 = match unit {
        CalUnit::Hour => 3_600_000,
        CalUnit::Minute => 60_000,
        CalUnit::Second => 1000,
        CalUnit::Millisecond => 1,
        _ => return None,
    };
    let day: i128 = 86_400_000;
    let base = ((t.hour as i128 * 60 + t.minute as i128) * 60 + t.second as i128) * 1000 + t.millis as i128;
    let ms = (base + (amount as i128 * ms_per as i128)).rem_euclid(day) as i64;
    let n = DateTimeValue::from_epoch_millis_local(ms, t.precision, None);
    Some(TimeValue::from_dt(&n.truncate(t.precision)))
}

/// Precision in digits as defined for `precision()` (4, 6, 8, 10, 12, 14, 17).
pub(crate) fn datetime_precision_digits(p: DtPrecision) -> i64 {
    match p {
        DtPrecision::Year => 4,
        DtPrecision::Month => 6,
        DtPrecision::Day => 8,
        DtPrecision::Hour => 10,
        DtPrecision::Minute => 12,
        DtPrecision::Second => 14,
        DtPrecision::Millisecond => 17,
    }
}

pub(crate) fn time_precision_digits(p: DtPrecision) -> i64 {
    match p {
        DtPrecision::Hour => 2,
        DtPrecision::Minute => 4,
        DtPrecision::Second => 6,
        _ => 9,
    }
}

fn dt_precision_from_digits(d: i64) -> Option<DtPrecision> {
    Some(match d {
        4 => DtPrecision::Year,
        6 => DtPrecision::Month,
        8 => DtPrecision::Day,
        10 => DtPrecision::Hour,
        12 => DtPrecision::Minute,
        14 => DtPrecision::Second,
        17 => DtPrecision::Millisecond,
        _ => return None,
    })
}

/// Low/high boundary of a date or date-time at the given precision (in digits).
pub(crate) fn datetime_boundary(v: &DateTimeValue, digits: Option<i64>, high: bool, is_date: bool) -> Option<DateTimeValue> {
    let target = match digits {
        Some(d) => dt_precision_from_digits(d)?,
        None => {
            if is_date {
                DtPrecision::Day
            } else {
                DtPrecision::Millisecond
            }
        }
    };
    if is_date && target > DtPrecision::Day {
        return None;
    }
    let mut v = *v;
    if v.precision == DtPrecision::Hour {
        // `T08` is not a legal FHIR time: treat as `T08:00`
        v.precision = DtPrecision::Minute;
        v.minute = 0;
    }
    let mut r = v;
    if target < v.precision {
        r = v.truncate(target);
    } else {
        // fill in missing components
        if high {
            if v.precision < DtPrecision::Month {
                r.month = 12;
            }
            if v.precision < DtPrecision::Day {
                r.day = days_in_month(r.year, r.month);
            }
            if v.precision < DtPrecision::Hour {
                r.hour = 23;
            }
            if v.precision < DtPrecision::Minute {
                r.minute = 59;
            }
            if v.precision < DtPrecision::Second {
                r.second = 59;
            }
            if v.precision < DtPrecision::Millisecond {
                r.millis = 999;
            }
        } else {
            if v.precision < DtPrecision::Month {
                r.month = 1;
            }
            if v.precision < DtPrecision::Day {
                r.day = 1;
            }
            if v.precision < DtPrecision::Hour {
                r.hour = 0;
            }
            if v.precision < DtPrecision::Minute {
                r.minute = 0;
            }
            if v.precision < DtPrecision::Second {
                r.second = 0;
            }
            if v.precision < DtPrecision::Millisecond {
                r.millis = 0;
            }
        }
        r.precision = target;
        if target >= DtPrecision::Hour && r.tz.is_none() {
            r.tz = Some(if high { -12 * 60 } else { 14 * 60 });
        }
        r = r.truncate(target);
    }
    Some(r)
}

pub(crate) fn time_boundary(t: &TimeValue, digits: Option<i64>, high: bool) -> Option<TimeValue> {
    let target = match digits {
        None | Some(9) => DtPrecision::Millisecond,
        Some(2) => DtPrecision::Hour,
        Some(4) => DtPrecision::Minute,
        Some(6) => DtPrecision::Second,
        _ => return None,
    };
    let mut r = *t;
    if target > t.precision {
        if t.precision < DtPrecision::Minute {
            r.minute = if high { 59 } else { 0 };
        }
        if t.precision < DtPrecision::Second {
            r.second = if high { 59 } else { 0 };
        }
        if t.precision < DtPrecision::Millisecond {
            r.millis = if high { 999 } else { 0 };
        }
    }
    r.precision = target;
    Some(TimeValue::from_dt(&r.as_dt().truncate(target)))
}

/// Current UTC time as a date-time with millisecond precision and `Z` timezone.
pub fn now_utc() -> DateTimeValue {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    DateTimeValue::from_epoch_millis_local(ms, DtPrecision::Millisecond, Some(0))
}

pub(crate) fn time_of(dt: &DateTimeValue) -> TimeValue {
    TimeValue::from_dt(dt)
}

/// Whole calendar periods (`year`, `month`, `week`, `day`) from `a` to `b`, as CQL's
/// `duration in` / FHIRPath 3.0 `duration()`: a period counts once it has fully passed
/// (times of day count when both sides have them; offsets are normalised). `None` for an
/// unknown unit.
pub(crate) fn whole_periods(a: &DateTimeValue, b: &DateTimeValue, unit: &str) -> Option<i64> {
    let timed = a.precision >= DtPrecision::Hour && b.precision >= DtPrecision::Hour;
    let (a, b) = if timed {
        (a.shifted(a.tz.unwrap_or(0) as i64), b.shifted(b.tz.unwrap_or(0) as i64))
    } else {
        (*a, *b)
    };
    let tod = |d: &DateTimeValue| if timed { ((d.hour as i64 * 60 + d.minute as i64) * 60 + d.second as i64) * 1000 + d.millis as i64 } else { 0 };
    let (sign, lo, hi) = if (days_from_civil(b.year, b.month, b.day), tod(&b)) >= (days_from_civil(a.year, a.month, a.day), tod(&a)) { (1, a, b) } else { (-1, b, a) };
    let n = match unit {
        "day" | "week" => {
            let mut d = days_from_civil(hi.year, hi.month, hi.day) - days_from_civil(lo.year, lo.month, lo.day);
            if tod(&hi) < tod(&lo) {
                d -= 1;
            }
            if unit == "week" { d / 7 } else { d }
        }
        "month" | "year" => {
            let mut m = (hi.year as i64 - lo.year as i64) * 12 + hi.month as i64 - lo.month as i64;
            if (hi.day, tod(&hi)) < (lo.day, tod(&lo)) {
                m -= 1;
            }
            if unit == "year" { m / 12 } else { m }
        }
        _ => return None,
    };
    Some(sign * n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_roundtrip() {
        for d in [-800000i64, -1, 0, 1, 10957, 20000, 2932896] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
    }

    #[test]
    fn parse_and_format() {
        let d = parse_datetime("2015-02-04T14:34:28.123+10:00").unwrap();
        assert_eq!(d.to_datetime_string(), "2015-02-04T14:34:28.123+10:00");
        assert!(parse_datetime("2015-02-30").is_none());
        assert_eq!(parse_datetime("2015T").unwrap().precision, DtPrecision::Year);
        assert_eq!(parse_time("14:34").unwrap().to_time_string(), "14:34");
    }

    #[test]
    fn tz_comparison() {
        let a = parse_datetime("2017-11-05T01:30:00.0-04:00").unwrap();
        let b = parse_datetime("2017-11-05T01:15:00.0-05:00").unwrap();
        assert_eq!(compare_datetimes(&a, &b), Some(Ordering::Less));
        let c = parse_datetime("2012-04-15T15:00:00Z").unwrap();
        let d = parse_datetime("2012-04-15T10:00:00").unwrap();
        assert_eq!(compare_datetimes(&c, &d), None);
        let e = parse_datetime("2012-04-18T10:00:00").unwrap();
        assert_eq!(compare_datetimes(&c, &e), Some(Ordering::Less));
    }

    #[test]
    fn month_arith_clamps() {
        let d = parse_date("2020-01-31").unwrap();
        let r = add_to_datetime(&d, 1, CalUnit::Month).unwrap();
        assert_eq!(r.to_date_string(), "2020-02-29");
    }
}
