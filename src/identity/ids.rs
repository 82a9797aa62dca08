//! Check digits of trusted national identifiers, so that a mistyped number
//! never makes a deterministic match:
//!
//! * German KVNR (fhir.de naming system `http://fhir.de/sid/gkv/kvid-10`,
//!   § 290 SGB V, "Richtlinie Krankenversichertennummer" Anlage 1): a letter
//!   (A=01 … Z=26) and 8 digits, weights 1-2-1-2…, digit sums, mod 10.
//! * Chinese resident identity number (GB 11643-1999): 17 digits and a check
//!   character by ISO 7064 MOD 11-2 (`X` for 10).

use crate::services::mpi::CheckRule;

/// Is `value` valid under `rule`?
pub fn valid(rule: CheckRule, value: &str) -> bool {
    match rule {
        CheckRule::Kvnr => kvnr_valid(value),
        CheckRule::Gb11643 => gb11643_valid(value),
        CheckRule::None => !value.trim().is_empty(),
    }
}

pub fn kvnr_valid(v: &str) -> bool {
    let b = v.as_bytes();
    if b.len() != 10 || !b[0].is_ascii_uppercase() || !b[1..].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let letter = b[0] - b'A' + 1;
    let mut digits = [0u32; 10];
    digits[0] = u32::from(letter / 10);
    digits[1] = u32::from(letter % 10);
    for i in 0..8 {
        digits[i + 2] = u32::from(b[i + 1] - b'0');
    }
    let sum: u32 = digits
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            let p = d * if i % 2 == 0 { 1 } else { 2 };
            p / 10 + p % 10
        })
        .sum();
    sum % 10 == u32::from(b[9] - b'0')
}

pub fn gb11643_valid(v: &str) -> bool {
    let b = v.as_bytes();
    if b.len() != 18 || !b[..17].iter().all(u8::is_ascii_digit) {
        return false;
    }
    // ISO 7064 MOD 11-2: weights 2^(17-i) mod 11
    let mut sum = 0u32;
    let mut w = 1u32;
    for i in (0..17).rev() {
        w = (w * 2) % 11;
        sum += u32::from(b[i] - b'0') * w;
    }
    let check = (12 - (sum % 11)) % 11;
    let want = if check == 10 { b'X' } else { b'0' + check as u8 };
    b[17].to_ascii_uppercase() == want
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvnr() {
        assert!(kvnr_valid("X110411319"));
        assert!(kvnr_valid("A000500015"));
        assert!(!kvnr_valid("X110411318"));
        assert!(!kvnr_valid("x110411319"));
        assert!(!kvnr_valid("X11041131"));
    }

    #[test]
    fn gb11643() {
        // the standard's worked example and a common test number
        assert!(gb11643_valid("11010519491231002X"));
        assert!(!gb11643_valid("110105194912310029"));
        assert!(gb11643_valid("440524188001010014"));
        assert!(!gb11643_valid("440524188001010015"));
        assert!(!gb11643_valid("44052418800101001"));
        assert!(valid(CheckRule::None, "abc") && !valid(CheckRule::None, " "));
    }
}
