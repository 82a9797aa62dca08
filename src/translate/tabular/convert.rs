//! Value conversions for CSV/JSON import: dates with a declared pattern,
//! decimals in a locale (`1,5`), integers and booleans, into the FHIR R4
//! primitive formats (`datatypes.html`: date, dateTime, decimal, integer,
//! boolean).
//!
//! Hand-written on purpose: the patterns are a tiny subset (`yyyy MM dd
//! HH mm ss XXX`, `d`/`M` for unpadded, `'…'` literals, or `iso`), and the
//! date/time checks and the sender's time zone (DST gaps are errors) reuse
//! the strict HL7 v2 timestamp code (`hl7v2::datetime`, built on `jiff`), so
//! nothing here needs a date crate of its own. Decimal text is kept exactly
//! (`1,50` becomes the JSON number `1.50`, precision kept, as FHIR wants).

use crate::translate::hl7v2::{Hl7DateTime, Zone};

/// Decimal separator convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locale {
    /// `1.5`, grouping `1,234.5` (en)
    Point,
    /// `1,5`, grouping `1.234,5` (de, da)
    Comma,
}

impl Locale {
    pub fn parse(s: &str) -> Option<Locale> {
        match s.to_ascii_lowercase().as_str() {
            "de" | "da" | "comma" | "de-de" | "da-dk" => Some(Locale::Comma),
            "en" | "point" | "c" => Some(Locale::Point),
            _ => None,
        }
    }
    fn separators(self) -> (char, char) {
        match self {
            Locale::Point => ('.', ','),
            Locale::Comma => (',', '.'),
        }
    }
    fn example(self) -> &'static str {
        match self {
            Locale::Point => "1.5",
            Locale::Comma => "1,5",
        }
    }
}

/// A decimal in the locale → FHIR decimal text (`-1.234,50` → `-1234.50`).
pub fn decimal(s: &str, locale: Locale) -> Result<String, String> {
    let (dec, group) = locale.separators();
    let bad = || format!("{s:?} is not a decimal (expected e.g. {})", locale.example());
    let (sign, body) = match s.strip_prefix('-') {
        Some(b) => ("-", b),
        None => ("", s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = match body.split_once(dec) {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    if int.is_empty() || frac.is_some_and(|f| f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit())) {
        return Err(bad());
    }
    let digits: String = if int.contains(group) {
        // grouping only in blocks of three: 1.234.567
        let blocks: Vec<&str> = int.split(group).collect();
        let ok = blocks[0].len() <= 3
            && !blocks[0].is_empty()
            && blocks[1..].iter().all(|b| b.len() == 3)
            && blocks.iter().all(|b| b.bytes().all(|c| c.is_ascii_digit()));
        if !ok {
            return Err(bad());
        }
        blocks.concat()
    } else if int.bytes().all(|b| b.is_ascii_digit()) {
        int.to_owned()
    } else {
        return Err(bad());
    };
    Ok(match frac {
        Some(f) => format!("{sign}{digits}.{f}"),
        None => format!("{sign}{digits}"),
    })
}

/// An integer (`-12`, `+3`, `7`) within FHIR's 32-bit range.
pub fn integer(s: &str) -> Result<i64, String> {
    let ok = s.strip_prefix(['+', '-']).unwrap_or(s);
    if ok.is_empty() || !ok.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not an integer"));
    }
    let v: i64 = s.trim_start_matches('+').parse().map_err(|_| format!("{s:?} is not an integer"))?;
    if v < i64::from(i32::MIN) || v > i64::from(i32::MAX) {
        return Err(format!("{s} is outside the FHIR integer range"));
    }
    Ok(v)
}

/// true/false, ja/nein, yes/no, j/n, y/n, 1/0 (case-insensitive).
pub fn boolean(s: &str) -> Result<bool, String> {
    match s.to_lowercase().as_str() {
        "true" | "ja" | "yes" | "j" | "y" | "1" => Ok(true),
        "false" | "nein" | "no" | "n" | "0" => Ok(false),
        _ => Err(format!("{s:?} is not a boolean (true/false, ja/nein, 1/0)")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Year,
    Month { padded: bool },
    Day { padded: bool },
    Hour,
    Minute,
    Second,
    Offset,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Tok(Tok),
    Lit(char),
}

/// A compiled date pattern (`dd.MM.yyyy HH:mm`), or `iso` (FHIR's own
/// `YYYY-MM-DD[THH:MM[:SS][offset]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateFormat {
    text: String,
    alternatives: Vec<Vec<Piece>>,
}

impl DateFormat {
    pub fn parse(s: &str) -> Result<DateFormat, String> {
        if s == "iso" {
            let alts = ["yyyy-MM-dd'T'HH:mm:ssXXX", "yyyy-MM-dd'T'HH:mm:ss", "yyyy-MM-dd'T'HH:mmXXX", "yyyy-MM-dd'T'HH:mm", "yyyy-MM-dd"];
            let alternatives = alts.iter().map(|a| compile(a)).collect::<Result<_, _>>()?;
            return Ok(DateFormat { text: "iso (yyyy-MM-dd[THH:mm[:ss][±hh:mm]])".into(), alternatives });
        }
        Ok(DateFormat { text: s.to_owned(), alternatives: vec![compile(s)?] })
    }
}

fn compile(s: &str) -> Result<Vec<Piece>, String> {
    let mut out = vec![];
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    let starts = |i: usize, t: &str| cs[i..].iter().take(t.len()).copied().eq(t.chars());
    while i < cs.len() {
        let (tok, n) = if starts(i, "yyyy") {
            (Some(Tok::Year), 4)
        } else if starts(i, "MM") {
            (Some(Tok::Month { padded: true }), 2)
        } else if starts(i, "M") {
            (Some(Tok::Month { padded: false }), 1)
        } else if starts(i, "dd") {
            (Some(Tok::Day { padded: true }), 2)
        } else if starts(i, "d") {
            (Some(Tok::Day { padded: false }), 1)
        } else if starts(i, "HH") {
            (Some(Tok::Hour), 2)
        } else if starts(i, "mm") {
            (Some(Tok::Minute), 2)
        } else if starts(i, "ss") {
            (Some(Tok::Second), 2)
        } else if starts(i, "XXX") {
            (Some(Tok::Offset), 3)
        } else {
            (None, 0)
        };
        if let Some(t) = tok {
            if out.contains(&Piece::Tok(t)) {
                return Err(format!("date format {s:?} repeats a field"));
            }
            out.push(Piece::Tok(t));
            i += n;
            continue;
        }
        let c = cs[i];
        if c == '\'' {
            let end = cs[i + 1..].iter().position(|&c| c == '\'').ok_or_else(|| format!("date format {s:?}: unclosed quote"))?;
            out.extend(cs[i + 1..i + 1 + end].iter().map(|&c| Piece::Lit(c)));
            i += end + 2;
            continue;
        }
        if c.is_ascii_alphabetic() {
            return Err(format!("date format {s:?}: unknown letter '{c}' (use yyyy, MM, M, dd, d, HH, mm, ss, XXX; quote literals as 'T')"));
        }
        out.push(Piece::Lit(c));
        i += 1;
    }
    let has = |t: Tok| out.iter().any(|p| matches!(p, Piece::Tok(x) if std::mem::discriminant(x) == std::mem::discriminant(&t)));
    if !has(Tok::Year) || !has(Tok::Month { padded: true }) || !has(Tok::Day { padded: true }) {
        return Err(format!("date format {s:?} needs year, month and day (yyyy, MM, dd)"));
    }
    if (has(Tok::Minute) || has(Tok::Second)) && !has(Tok::Hour) || has(Tok::Hour) && !has(Tok::Minute) {
        return Err(format!("date format {s:?}: a time needs HH and mm"));
    }
    Ok(out)
}

/// Fields read from a value.
#[derive(Default)]
struct Parts {
    y: u32,
    mo: u32,
    d: u32,
    h: Option<u32>,
    mi: Option<u32>,
    s: Option<u32>,
    /// `+0100` / `-0530` / `+0000`
    off: Option<String>,
}

fn take_digits(s: &[u8], i: &mut usize, min: usize, max: usize) -> Option<u32> {
    let start = *i;
    while *i < s.len() && *i - start < max && s[*i].is_ascii_digit() {
        *i += 1;
    }
    if *i - start < min {
        return None;
    }
    std::str::from_utf8(&s[start..*i]).ok()?.parse().ok()
}

fn match_pieces(pieces: &[Piece], v: &str) -> Option<Parts> {
    let b = v.as_bytes();
    let mut i = 0;
    let mut p = Parts::default();
    for piece in pieces {
        match piece {
            Piece::Lit(c) => {
                let mut buf = [0u8; 4];
                let enc = c.encode_utf8(&mut buf).as_bytes();
                if !b[i..].starts_with(enc) {
                    return None;
                }
                i += enc.len();
            }
            Piece::Tok(Tok::Year) => p.y = take_digits(b, &mut i, 4, 4)?,
            Piece::Tok(Tok::Month { padded }) => p.mo = take_digits(b, &mut i, if *padded { 2 } else { 1 }, 2)?,
            Piece::Tok(Tok::Day { padded }) => p.d = take_digits(b, &mut i, if *padded { 2 } else { 1 }, 2)?,
            Piece::Tok(Tok::Hour) => p.h = Some(take_digits(b, &mut i, 2, 2)?),
            Piece::Tok(Tok::Minute) => p.mi = Some(take_digits(b, &mut i, 2, 2)?),
            Piece::Tok(Tok::Second) => p.s = Some(take_digits(b, &mut i, 2, 2)?),
            Piece::Tok(Tok::Offset) => {
                if b.get(i) == Some(&b'Z') {
                    p.off = Some("+0000".into());
                    i += 1;
                } else {
                    let sign = *b.get(i)?;
                    if sign != b'+' && sign != b'-' {
                        return None;
                    }
                    i += 1;
                    let hh = take_digits(b, &mut i, 2, 2)?;
                    if b.get(i) != Some(&b':') {
                        return None;
                    }
                    i += 1;
                    let mm = take_digits(b, &mut i, 2, 2)?;
                    p.off = Some(format!("{}{hh:02}{mm:02}", sign as char));
                }
            }
        }
    }
    (i == b.len()).then_some(p)
}

fn parse_parts(v: &str, f: &DateFormat, noun: &str) -> Result<Hl7DateTime, String> {
    let p = f
        .alternatives
        .iter()
        .find_map(|a| match_pieces(a, v))
        .ok_or_else(|| format!("{v:?} does not match the date format {}", f.text))?;
    let mut dtm = format!("{:04}{:02}{:02}", p.y, p.mo, p.d);
    if let (Some(h), Some(mi)) = (p.h, p.mi) {
        dtm.push_str(&format!("{h:02}{mi:02}"));
        if let Some(s) = p.s {
            dtm.push_str(&format!("{s:02}"));
        }
        if let Some(o) = &p.off {
            dtm.push_str(o);
        }
    }
    Hl7DateTime::parse(&dtm).map_err(|e| format!("{v:?} is not a valid {noun}: {}", e.message))
}

/// A FHIR `date` (a time of day in the value is dropped).
pub fn date(v: &str, f: &DateFormat) -> Result<String, String> {
    Ok(parse_parts(v, f, "date")?.to_fhir_date())
}

/// A FHIR `dateTime`: a date alone stays a date; a time without an offset
/// takes the institution's zone (a local time in a DST gap is an error).
pub fn datetime(v: &str, f: &DateFormat, zone: &Zone) -> Result<String, String> {
    let d = parse_parts(v, f, "date/time")?;
    if !d.has_time() {
        return Ok(d.to_fhir_date());
    }
    d.to_fhir_datetime(zone).map_err(|e| format!("{v:?} is not a valid date/time: {}", e.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        assert_eq!(decimal("1,5", Locale::Comma).unwrap(), "1.5");
        assert_eq!(decimal("-1.234,50", Locale::Comma).unwrap(), "-1234.50");
        assert_eq!(decimal("72", Locale::Comma).unwrap(), "72");
        assert_eq!(decimal("1,234.5", Locale::Point).unwrap(), "1234.5");
        assert_eq!(decimal("0.25", Locale::Point).unwrap(), "0.25");
        for bad in ["1,5,3", ",5", "1,", "abc", "1.5", "12.34,5", "1e3", "", "-", "1 5"] {
            assert!(decimal(bad, Locale::Comma).is_err(), "{bad}");
        }
        assert!(decimal("1,5", Locale::Point).is_err());
    }

    #[test]
    fn integers_and_booleans() {
        assert_eq!(integer("-12").unwrap(), -12);
        assert!(integer("1,5").is_err() && integer("99999999999").is_err() && integer("+").is_err());
        assert!(boolean("Ja").unwrap() && !boolean("nein").unwrap() && boolean("vielleicht").is_err());
    }

    #[test]
    fn dates() {
        let de = DateFormat::parse("dd.MM.yyyy").unwrap();
        assert_eq!(date("14.03.1956", &de).unwrap(), "1956-03-14");
        assert!(date("31.02.1950", &de).unwrap_err().contains("not a valid date"));
        assert!(date("1950-02-01", &de).unwrap_err().contains("does not match"));
        assert!(date("1.2.1950", &de).is_err());
        let loose = DateFormat::parse("d.M.yyyy").unwrap();
        assert_eq!(date("1.2.1950", &loose).unwrap(), "1950-02-01");
        let berlin = Zone::iana("Europe/Berlin").unwrap();
        let dt = DateFormat::parse("dd.MM.yyyy HH:mm").unwrap();
        assert_eq!(datetime("05.03.2024 08:15", &dt, &berlin).unwrap(), "2024-03-05T08:15:00+01:00");
        assert_eq!(datetime("05.07.2024 08:15", &dt, &berlin).unwrap(), "2024-07-05T08:15:00+02:00");
        assert!(datetime("31.03.2024 02:30", &dt, &berlin).is_err(), "DST gap");
        let iso = DateFormat::parse("iso").unwrap();
        assert_eq!(datetime("2024-03-05T08:00:00+01:00", &iso, &berlin).unwrap(), "2024-03-05T08:00:00+01:00");
        assert_eq!(datetime("2024-03-05T08:00", &iso, &berlin).unwrap(), "2024-03-05T08:00:00+01:00");
        assert_eq!(datetime("2024-03-05T07:00:00Z", &iso, &berlin).unwrap(), "2024-03-05T07:00:00+00:00");
        assert_eq!(date("2024-03-05", &iso).unwrap(), "2024-03-05");
        assert!(DateFormat::parse("DD.MM.YYYY").is_err());
        assert!(DateFormat::parse("MM.yyyy").is_err());
        assert_eq!(date("2024-03-05", &DateFormat::parse("yyyy-MM-dd").unwrap()).unwrap(), "2024-03-05");
        let t = DateFormat::parse("yyyy-MM-dd'T'HH:mm").unwrap();
        assert_eq!(datetime("2024-03-05T10:00", &t, &berlin).unwrap(), "2024-03-05T10:00:00+01:00");
    }
}
