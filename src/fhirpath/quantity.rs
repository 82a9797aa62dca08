//! System.Quantity plus a small UCUM subset (prefixes, common base/derived/customary units,
//! products, quotients and exponents) used for comparison, equality and arithmetic.

use rust_decimal::prelude::*;
use rust_decimal::Decimal;
use std::cmp::Ordering;

/// A FHIRPath quantity. `calendar` is true for the unquoted calendar keywords (`4 days`).
#[derive(Clone, Debug, PartialEq)]
pub struct Quantity {
    /// Numeric value (exact).
    pub value: Decimal,
    /// UCUM code, or the calendar keyword as written when `calendar` is true.
    pub unit: String,
    /// True for unquoted calendar duration keywords (`year`, `days`, ...).
    pub calendar: bool,
}

/// Dimension vector: m, g, s, K, C, cd, mol, arbitrary-unit, calendar-month.
pub(crate) type Dims = [i8; 9];
const DIMLESS: Dims = [0; 9];

/// Canonical form: value expressed in base units.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Canonical {
    pub value: Decimal,
    pub dims: Dims,
}

impl Quantity {
    /// Creates a quantity; an empty unit becomes `'1'`.
    pub fn new(value: Decimal, unit: impl Into<String>, calendar: bool) -> Quantity {
        let mut unit = unit.into();
        if unit.is_empty() {
            unit = "1".to_string();
        }
        Quantity { value, unit, calendar }
    }

    /// FHIRPath literal form: `1 'wk'`, `1 week`.
    pub fn to_fhirpath_string(&self) -> String {
        if self.calendar {
            format!("{} {}", self.value, self.unit)
        } else {
            format!("{} '{}'", self.value, self.unit)
        }
    }

    /// The UCUM code this quantity maps to (calendar week..millisecond map to UCUM; year/month do not).
    pub(crate) fn ucum_code(&self) -> Option<&str> {
        if !self.calendar {
            return Some(&self.unit);
        }
        Some(match self.unit.as_str() {
            "week" | "weeks" => "wk",
            "day" | "days" => "d",
            "hour" | "hours" => "h",
            "minute" | "minutes" => "min",
            "second" | "seconds" => "s",
            "millisecond" | "milliseconds" => "ms",
            _ => return None,
        })
    }

    fn unit_def(&self) -> Option<(Decimal, Dims)> {
        if self.calendar {
            match self.unit.as_str() {
                "year" | "years" => {
                    let mut d = DIMLESS;
                    d[8] = 1;
                    return Some((Decimal::from(12), d));
                }
                "month" | "months" => {
                    let mut d = DIMLESS;
                    d[8] = 1;
                    return Some((Decimal::ONE, d));
                }
                _ => {}
            }
        }
        parse_unit(self.ucum_code()?)
    }

    pub(crate) fn canonical(&self) -> Option<Canonical> {
        let (f, dims) = self.unit_def()?;
        Some(Canonical { value: self.value.checked_mul(f)?, dims })
    }

    fn same_unit(&self, other: &Quantity) -> bool {
        if self.calendar == other.calendar {
            return self.unit == other.unit || (self.calendar && self.unit.trim_end_matches('s') == other.unit.trim_end_matches('s'));
        }
        false
    }

    /// Compares two quantities; `None` when they are not comparable.
    pub(crate) fn compare(&self, other: &Quantity) -> Option<Ordering> {
        if self.same_unit(other) {
            return Some(self.value.cmp(&other.value));
        }
        let a = self.canonical()?;
        let b = other.canonical()?;
        if a.dims != b.dims {
            return None;
        }
        Some(a.value.cmp(&b.value))
    }

    /// Equivalence: values compared at the precision of the least precise operand.
    pub(crate) fn equivalent(&self, other: &Quantity) -> bool {
        let (a, b) = if self.same_unit(other) {
            (self.value, other.value)
        } else {
            match (self.canonical(), other.canonical()) {
                (Some(a), Some(b)) if a.dims == b.dims => (a.value, b.value),
                _ => return false,
            }
        };
        let scale = a.scale().min(b.scale());
        a.round_dp(scale) == b.round_dp(scale)
    }

    /// Converts to another unit (UCUM code or calendar keyword).
    pub(crate) fn convert_to(&self, unit: &str, calendar: bool) -> Option<Quantity> {
        let target = Quantity::new(Decimal::ONE, unit, calendar);
        if self.same_unit(&target) {
            return Some(self.clone());
        }
        let a = self.canonical()?;
        let (f, dims) = target.unit_def()?;
        if dims != a.dims || f.is_zero() {
            return None;
        }
        let v = a.value.checked_div(f)?.normalize();
        Some(Quantity::new(v, unit, calendar))
    }

    /// Whether two quantities have comparable units.
    pub(crate) fn comparable(&self, other: &Quantity) -> bool {
        if self.same_unit(other) {
            return true;
        }
        match (self.unit_def(), other.unit_def()) {
            (Some(a), Some(b)) => a.1 == b.1,
            _ => false,
        }
    }

    pub(crate) fn add(&self, other: &Quantity, negate: bool) -> Option<Quantity> {
        let o = if self.same_unit(other) { other.clone() } else { other.convert_to(&self.unit, self.calendar)? };
        let v = if negate { self.value.checked_sub(o.value)? } else { self.value.checked_add(o.value)? };
        Some(Quantity { value: v, unit: self.unit.clone(), calendar: self.calendar })
    }

    pub(crate) fn mul(&self, other: &Quantity, divide: bool) -> Option<Quantity> {
        // fast paths keeping the units readable
        if other.unit == "1" && !other.calendar {
            let v = if divide { self.value.checked_div(other.value)? } else { self.value.checked_mul(other.value)? };
            return Some(Quantity { value: v, unit: self.unit.clone(), calendar: self.calendar });
        }
        let a = self.canonical()?;
        let b = other.canonical()?;
        let (v, dims) = combine((a.value, a.dims), (b.value, b.dims), divide)?;
        if dims[7] != 0 || dims[8] != 0 {
            return None;
        }
        Some(Quantity::new(v.normalize(), dims_to_unit(&dims), false))
    }
}

fn dims_to_unit(d: &Dims) -> String {
    const NAMES: [&str; 7] = ["g", "m", "s", "K", "C", "cd", "mol"];
    const IDX: [usize; 7] = [1, 0, 2, 3, 4, 5, 6];
    let mut pos = Vec::new();
    let mut neg = Vec::new();
    for (n, &i) in NAMES.iter().zip(IDX.iter()) {
        let e = d[i];
        if e > 0 {
            pos.push(if e == 1 { n.to_string() } else { format!("{}{}", n, e) });
        } else if e < 0 {
            neg.push(if e == -1 { n.to_string() } else { format!("{}{}", n, -e) });
        }
    }
    let mut s = if pos.is_empty() { "1".to_string() } else { pos.join(".") };
    for n in neg {
        s.push('/');
        s.push_str(&n);
    }
    s
}

fn dims(spec: &[(usize, i8)]) -> Dims {
    let mut d = DIMLESS;
    for &(i, e) in spec {
        d[i] = e;
    }
    d
}

const M: usize = 0;
const G: usize = 1;
const S: usize = 2;
const K: usize = 3;
const C: usize = 4;
const CD: usize = 5;
const MOL: usize = 6;
const ARB: usize = 7;

/// (code, factor, dims, metric)
fn atom(code: &str) -> Option<(Decimal, Dims, bool)> {
    let d = |s: &str| Decimal::from_str(s).ok();
    let r = match code {
        "m" => (d("1")?, dims(&[(M, 1)]), true),
        "g" => (d("1")?, dims(&[(G, 1)]), true),
        "s" => (d("1")?, dims(&[(S, 1)]), true),
        "K" => (d("1")?, dims(&[(K, 1)]), true),
        "C" => (d("1")?, dims(&[(C, 1)]), true),
        "cd" => (d("1")?, dims(&[(CD, 1)]), true),
        "mol" | "eq" | "osm" => (d("1")?, dims(&[(MOL, 1)]), true),
        "rad" | "sr" => (d("1")?, DIMLESS, true),
        "1" => (d("1")?, DIMLESS, false),
        "%" => (d("0.01")?, DIMLESS, false),
        "[ppth]" => (d("0.001")?, DIMLESS, false),
        "[ppm]" => (d("0.000001")?, DIMLESS, false),
        "[ppb]" => (d("0.000000001")?, DIMLESS, false),
        "[pi]" => (d("3.1415926535897932384626433832")?, DIMLESS, false),
        "deg" => (d("0.0174532925199432957692369077")?, DIMLESS, false),
        "min" => (d("60")?, dims(&[(S, 1)]), false),
        "h" => (d("3600")?, dims(&[(S, 1)]), false),
        "d" => (d("86400")?, dims(&[(S, 1)]), false),
        "wk" => (d("604800")?, dims(&[(S, 1)]), false),
        "a" | "a_j" => (d("31557600")?, dims(&[(S, 1)]), false),
        "a_t" => (d("31556925.216")?, dims(&[(S, 1)]), false),
        "a_g" => (d("31556952")?, dims(&[(S, 1)]), false),
        "mo" | "mo_j" => (d("2629800")?, dims(&[(S, 1)]), false),
        "mo_g" => (d("2629746")?, dims(&[(S, 1)]), false),
        "Hz" => (d("1")?, dims(&[(S, -1)]), true),
        "L" | "l" => (d("0.001")?, dims(&[(M, 3)]), true),
        "ar" => (d("100")?, dims(&[(M, 2)]), true),
        "t" => (d("1000000")?, dims(&[(G, 1)]), true),
        "u" => (d("0.0000000000000000000000016605")?, dims(&[(G, 1)]), true),
        "N" => (d("1000")?, dims(&[(G, 1), (M, 1), (S, -2)]), true),
        "Pa" => (d("1000")?, dims(&[(G, 1), (M, -1), (S, -2)]), true),
        "J" => (d("1000")?, dims(&[(G, 1), (M, 2), (S, -2)]), true),
        "W" => (d("1000")?, dims(&[(G, 1), (M, 2), (S, -3)]), true),
        "A" => (d("1")?, dims(&[(C, 1), (S, -1)]), true),
        "V" => (d("1000")?, dims(&[(G, 1), (M, 2), (S, -2), (C, -1)]), true),
        "bar" => (d("100000000")?, dims(&[(G, 1), (M, -1), (S, -2)]), true),
        "atm" => (d("101325000")?, dims(&[(G, 1), (M, -1), (S, -2)]), false),
        "m[Hg]" => (d("133322000")?, dims(&[(G, 1), (M, -1), (S, -2)]), true),
        "m[H2O]" => (d("9806650")?, dims(&[(G, 1), (M, -1), (S, -2)]), true),
        "[psi]" => (d("6894757.2931783")?, dims(&[(G, 1), (M, -1), (S, -2)]), false),
        "cal" | "cal_th" => (d("4184")?, dims(&[(G, 1), (M, 2), (S, -2)]), true),
        "[Cal]" => (d("4184000")?, dims(&[(G, 1), (M, 2), (S, -2)]), false),
        "kat" => (d("1")?, dims(&[(MOL, 1), (S, -1)]), true),
        "U" => (d("0.0000000166666666666666666667")?, dims(&[(MOL, 1), (S, -1)]), true),
        "[iU]" | "[IU]" => (d("1")?, dims(&[(ARB, 1)]), true),
        "[arb'U]" => (d("1")?, dims(&[(ARB, 1)]), false),
        "[in_i]" => (d("0.0254")?, dims(&[(M, 1)]), false),
        "[ft_i]" => (d("0.3048")?, dims(&[(M, 1)]), false),
        "[yd_i]" => (d("0.9144")?, dims(&[(M, 1)]), false),
        "[mi_i]" => (d("1609.344")?, dims(&[(M, 1)]), false),
        "[lb_av]" => (d("453.59237")?, dims(&[(G, 1)]), false),
        "[oz_av]" => (d("28.349523125")?, dims(&[(G, 1)]), false),
        "[gr]" => (d("0.06479891")?, dims(&[(G, 1)]), false),
        "[stone_av]" => (d("6350.29318")?, dims(&[(G, 1)]), false),
        "[foz_us]" => (d("0.0000295735295625")?, dims(&[(M, 3)]), false),
        "[gal_us]" => (d("0.003785411784")?, dims(&[(M, 3)]), false),
        "[qt_us]" => (d("0.000946352946")?, dims(&[(M, 3)]), false),
        "[pt_us]" => (d("0.000473176473")?, dims(&[(M, 3)]), false),
        "[cup_us]" => (d("0.0002365882365")?, dims(&[(M, 3)]), false),
        "[tbs_us]" => (d("0.00001478676478125")?, dims(&[(M, 3)]), false),
        "[tsp_us]" => (d("0.00000492892159375")?, dims(&[(M, 3)]), false),
        "[drp]" => (d("0.00000005")?, dims(&[(M, 3)]), false),
        _ => return None,
    };
    Some(r)
}

fn prefix(p: &str) -> Option<Decimal> {
    let e: i32 = match p {
        "Y" => 24,
        "Z" => 21,
        "E" => 18,
        "P" => 15,
        "T" => 12,
        "G" => 9,
        "M" => 6,
        "k" => 3,
        "h" => 2,
        "da" => 1,
        "d" => -1,
        "c" => -2,
        "m" => -3,
        "u" => -6,
        "n" => -9,
        "p" => -12,
        "f" => -15,
        "a" => -18,
        "z" => -21,
        "y" => -24,
        _ => return None,
    };
    pow10(e)
}

fn pow10(e: i32) -> Option<Decimal> {
    if e >= 0 {
        if e > 28 {
            return None;
        }
        Some(Decimal::from_i128_with_scale(10i128.pow(e as u32), 0))
    } else {
        if -e > 28 {
            return None;
        }
        Some(Decimal::new(1, (-e) as u32))
    }
}

fn simple_unit(s: &str) -> Option<(Decimal, Dims)> {
    if let Some((f, d, _)) = atom(s) {
        return Some((f, d));
    }
    for plen in [1usize, 2] {
        if s.len() > plen && s.is_char_boundary(plen) {
            let (p, rest) = s.split_at(plen);
            if let (Some(pf), Some((f, d, true))) = (prefix(p), atom(rest)) {
                return Some((pf.checked_mul(f)?, d));
            }
        }
    }
    None
}

struct UnitParser<'s> {
    s: &'s [u8],
    src: &'s str,
    i: usize,
}

fn combine(a: (Decimal, Dims), b: (Decimal, Dims), div: bool) -> Option<(Decimal, Dims)> {
    let mut d = a.1;
    for (x, y) in d.iter_mut().zip(b.1.iter()) {
        *x = if div { x.checked_sub(*y)? } else { x.checked_add(*y)? };
    }
    let f = if div { a.0.checked_div(b.0)? } else { a.0.checked_mul(b.0)? };
    Some((f, d))
}

fn power(u: (Decimal, Dims), e: i32) -> Option<(Decimal, Dims)> {
    if !(-10..=10).contains(&e) {
        return None;
    }
    let mut f = Decimal::ONE;
    for _ in 0..e.abs() {
        f = f.checked_mul(u.0)?;
    }
    if e < 0 {
        f = Decimal::ONE.checked_div(f)?;
    }
    let mut d = u.1;
    for x in d.iter_mut() {
        *x = x.checked_mul(e as i8)?;
    }
    Some((f, d))
}

impl<'s> UnitParser<'s> {
    fn term(&mut self, depth: usize) -> Option<(Decimal, Dims)> {
        if depth > 8 {
            return None;
        }
        let mut acc = if self.peek() == Some(b'/') {
            self.i += 1;
            let c = self.component(depth)?;
            combine((Decimal::ONE, DIMLESS), c, true)?
        } else {
            self.component(depth)?
        };
        loop {
            match self.peek() {
                Some(b'.') => {
                    self.i += 1;
                    let c = self.component(depth)?;
                    acc = combine(acc, c, false)?;
                }
                Some(b'/') => {
                    self.i += 1;
                    let c = self.component(depth)?;
                    acc = combine(acc, c, true)?;
                }
                _ => return Some(acc),
            }
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn exponent(&mut self) -> Option<i32> {
        let start = self.i;
        if matches!(self.peek(), Some(b'+') | Some(b'-')) {
            self.i += 1;
        }
        let ds = self.i;
        while matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
            self.i += 1;
        }
        if ds == self.i {
            self.i = start;
            return None;
        }
        self.src[start..self.i].parse().ok()
    }
    fn component(&mut self, depth: usize) -> Option<(Decimal, Dims)> {
        let mut u = match self.peek()? {
            b'(' => {
                self.i += 1;
                let t = self.term(depth + 1)?;
                if self.peek() != Some(b')') {
                    return None;
                }
                self.i += 1;
                t
            }
            b'{' => {
                // annotation only
                self.skip_annotation()?;
                return Some((Decimal::ONE, DIMLESS));
            }
            c if c.is_ascii_digit() => {
                let start = self.i;
                while matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
                    self.i += 1;
                }
                let n = &self.src[start..self.i];
                if n == "10" && matches!(self.peek(), Some(b'*') | Some(b'^')) {
                    self.i += 1;
                    let e = self.exponent()?;
                    pow10(e).map(|f| (f, DIMLESS))?
                } else {
                    (Decimal::from_str(n).ok()?, DIMLESS)
                }
            }
            _ => {
                let start = self.i;
                let mut in_br = false;
                while let Some(c) = self.peek() {
                    if in_br {
                        if c == b']' {
                            in_br = false;
                        }
                        self.i += 1;
                        continue;
                    }
                    if c == b'[' {
                        in_br = true;
                        self.i += 1;
                        continue;
                    }
                    if c == b'.' || c == b'/' || c == b'(' || c == b')' || c == b'{' || c.is_ascii_digit() || c == b'+' || c == b'-' {
                        break;
                    }
                    self.i += 1;
                }
                let name = &self.src[start..self.i];
                if name.is_empty() {
                    return None;
                }
                let u = simple_unit(name)?;
                match self.exponent() {
                    Some(e) => power(u, e)?,
                    None => u,
                }
            }
        };
        if self.peek() == Some(b'{') {
            self.skip_annotation()?;
        }
        if matches!(self.peek(), Some(b'+') | Some(b'-')) {
            if let Some(e) = self.exponent() {
                u = power(u, e)?;
            }
        }
        Some(u)
    }
    fn skip_annotation(&mut self) -> Option<()> {
        while let Some(c) = self.peek() {
            self.i += 1;
            if c == b'}' {
                return Some(());
            }
        }
        None
    }
}

/// Parses a UCUM unit expression into (factor to base units, dimensions).
pub(crate) fn parse_unit(code: &str) -> Option<(Decimal, Dims)> {
    if code.is_empty() || code.len() > 200 {
        return None;
    }
    let mut p = UnitParser { s: code.as_bytes(), src: code, i: 0 };
    let r = p.term(0)?;
    if p.i != code.len() {
        return None;
    }
    Some(r)
}

/// Whether the string is a unit we understand (used by `comparable()` and `toQuantity()`).
pub(crate) fn is_known_unit(code: &str) -> bool {
    parse_unit(code).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    fn q(v: &str, u: &str) -> Quantity {
        Quantity::new(Decimal::from_str(v).unwrap(), u, false)
    }
    #[test]
    fn conversions() {
        assert_eq!(q("4.0000", "g").compare(&q("4000.0", "mg")), Some(Ordering::Equal));
        assert!(q("4", "g").equivalent(&q("4040", "mg")));
        assert_eq!(q("1", "cm").compare(&q("1", "s")), None);
        assert!(q("1", "cm").comparable(&q("1", "[in_i]")));
        assert!(!q("1", "cm").comparable(&q("1", "[s]")));
        let r = q("2.0", "cm").mul(&q("2.0", "m"), false).unwrap();
        assert_eq!(r.compare(&q("0.040", "m2")), Some(Ordering::Equal));
        let r = q("4.0", "g").mul(&q("2.0", "m"), true).unwrap();
        assert_eq!(r.compare(&q("2", "g/m")), Some(Ordering::Equal));
        assert!(parse_unit("mm[Hg]").is_some());
        assert!(parse_unit("10*3/uL").is_some());
        assert!(parse_unit("kg/m2").is_some());
        assert!(parse_unit("mL{total}").is_some());
        let wk = Quantity::new(Decimal::ONE, "week", true);
        assert_eq!(q("7", "d").compare(&wk), Some(Ordering::Equal));
        let yr = Quantity::new(Decimal::ONE, "year", true);
        assert_eq!(q("1", "a").compare(&yr), None);
    }
}
