//! FHIR date/time values with their precision (R4 `datatypes.html#date`,
//! `#dateTime`, `#instant`) and the ranges search compares (R4
//! `search.html#date`: "a date is a period" — `2024-03` is the whole month).
//!
//! Times are counted in microseconds since the Unix epoch, UTC. A dateTime
//! with a time but without an offset is read as UTC (the R4 spec leaves the
//! zone to the server; translators give v2 times the sender's zone before
//! they get here). Ranges are half-open: `[lo, hi)`.

use std::time::{SystemTime, UNIX_EPOCH};

pub const MICROS_PER_SEC: i64 = 1_000_000;
pub const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SEC;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Precision {
    Year,
    Month,
    Day,
    Minute,
    Second,
    /// fraction digits given
    Fraction(u8),
}

/// A parsed date/dateTime/instant: its range and precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    pub lo: i64,
    pub hi: i64,
    pub precision: Precision,
}

/// Days since 1970-01-01 for a proleptic Gregorian civil date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

pub fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Current time, truncated to milliseconds (so the printed `lastUpdated` equals the stored value).
pub fn now_micros() -> i64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_millis() as i64) * 1000
}

/// `2026-11-23T09:15:02.123Z` (FHIR instant, UTC, millisecond precision).
pub fn format_instant(micros: i64) -> String {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let rem = micros.rem_euclid(MICROS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let secs = rem / MICROS_PER_SEC;
    let ms = (rem % MICROS_PER_SEC) / 1000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// RFC 7231 HTTP-date for `Last-Modified`.
pub fn format_http_date(micros: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_micros(micros.max(0) as u64);
    httpdate::fmt_http_date(t)
}

fn num(s: &str, lo: u32, hi: u32) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: u32 = s.parse().ok()?;
    (lo..=hi).contains(&v).then_some(v)
}

/// Parse a FHIR date, dateTime or instant (also the minute precision that
/// search values allow). Returns `None` for anything malformed or impossible.
pub fn parse(s: &str) -> Option<DateRange> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let parts: Vec<&str> = date.split('-').collect();
    if parts[0].len() != 4 {
        return None;
    }
    let y = num(parts[0], 1, 9999)? as i64;
    let (m, d, prec) = match parts.len() {
        1 => (1, 1, Precision::Year),
        2 if parts[1].len() == 2 => (num(parts[1], 1, 12)?, 1, Precision::Month),
        3 if parts[1].len() == 2 && parts[2].len() == 2 => {
            let m = num(parts[1], 1, 12)?;
            (m, num(parts[2], 1, days_in_month(y, m))?, Precision::Day)
        }
        _ => return None,
    };
    let day0 = days_from_civil(y, m, d) * MICROS_PER_DAY;
    let Some(t) = time else {
        if s.contains('T') {
            return None;
        }
        let hi = match prec {
            Precision::Year => days_from_civil(y + 1, 1, 1) * MICROS_PER_DAY,
            Precision::Month => {
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days_from_civil(ny, nm, 1) * MICROS_PER_DAY
            }
            _ => day0 + MICROS_PER_DAY,
        };
        return Some(DateRange { lo: day0, hi, precision: prec });
    };
    if prec != Precision::Day {
        return None;
    }
    // split offset
    let (clock, offset_us) = if let Some(c) = t.strip_suffix('Z') {
        (c, 0i64)
    } else if let Some(pos) = t.rfind(['+', '-']) {
        let (c, off) = t.split_at(pos);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        if oh.len() != 2 || om.len() != 2 {
            return None;
        }
        let oh = num(oh, 0, 14)? as i64;
        let om = num(om, 0, 59)? as i64;
        (c, sign * (oh * 3600 + om * 60) * MICROS_PER_SEC)
    } else {
        (t, 0)
    };
    let cp: Vec<&str> = clock.split(':').collect();
    if cp.len() < 2 || cp.len() > 3 || cp[0].len() != 2 || cp[1].len() != 2 {
        return None;
    }
    let hh = num(cp[0], 0, 23)? as i64;
    let mi = num(cp[1], 0, 59)? as i64;
    let (ss, frac_us, prec, width) = if cp.len() == 3 {
        let (sec, frac) = match cp[2].split_once('.') {
            Some((s, f)) => (s, Some(f)),
            None => (cp[2], None),
        };
        if sec.len() != 2 {
            return None;
        }
        let ss = num(sec, 0, 60)? as i64; // leap second tolerated
        match frac {
            None => (ss, 0, Precision::Second, MICROS_PER_SEC),
            Some(f) => {
                if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let digits = f.len().min(6);
                let v: i64 = f[..digits].parse().ok()?;
                let us = v * 10i64.pow((6 - digits) as u32);
                let width = 10i64.pow((6 - digits) as u32).max(1);
                (ss, us, Precision::Fraction(f.len().min(255) as u8), width)
            }
        }
    } else {
        (0, 0, Precision::Minute, 60 * MICROS_PER_SEC)
    };
    let lo = day0 + (hh * 3600 + mi * 60 + ss) * MICROS_PER_SEC + frac_us - offset_us;
    Some(DateRange { lo, hi: lo + width, precision: prec })
}

/// Is `s` a valid FHIR `instant` (seconds and offset required)?
pub fn is_instant(s: &str) -> bool {
    s.contains('T')
        && (s.ends_with('Z') || s[s.len().saturating_sub(6)..].starts_with(['+', '-']))
        && matches!(parse(s), Some(r) if r.precision >= Precision::Second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let y = parse("2024").unwrap();
        assert_eq!(y.hi - y.lo, 366 * MICROS_PER_DAY);
        let m = parse("2023-02").unwrap();
        assert_eq!(m.hi - m.lo, 28 * MICROS_PER_DAY);
        let d = parse("2024-02-29").unwrap();
        assert_eq!(d.hi - d.lo, MICROS_PER_DAY);
        assert!(parse("2023-02-29").is_none());
        assert!(parse("2024-13").is_none());
        let t = parse("2024-03-05T10:30:00+01:00").unwrap();
        let z = parse("2024-03-05T09:30:00Z").unwrap();
        assert_eq!(t.lo, z.lo);
        assert_eq!(t.hi - t.lo, MICROS_PER_SEC);
        let f = parse("2024-03-05T09:30:00.25Z").unwrap();
        assert_eq!(f.lo - z.lo, 250_000);
        assert!(parse("2024-03-05T25:00:00Z").is_none());
        assert!(parse("2024-03-05T").is_none());
        assert!(parse("24-03-05").is_none());
    }

    #[test]
    fn instant_format_roundtrip() {
        let r = parse("2026-11-23T09:15:02.123Z").unwrap();
        assert_eq!(format_instant(r.lo), "2026-11-23T09:15:02.123Z");
        assert!(is_instant("2026-11-23T09:15:02.123Z"));
        assert!(is_instant("2026-11-23T09:15:02+02:00"));
        assert!(!is_instant("2026-11-23"));
        for z in [-800_000i64, -1, 0, 1, 59, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }
}
