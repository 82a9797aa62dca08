//! Normalisation and similarity of demographic values for matching: name
//! folding, Kölner Phonetik, Jaro–Winkler, birth-date typo detection, phone
//! and postcode keys.
//!
//! **Kölner Phonetik** (Hans Joachim Postel, "Die Kölner Phonetik", IBM-
//! Nachrichten 19, 1969) is written here rather than taken from a crate: it
//! is ~60 lines of letter rules, the crates that have it are unmaintained or
//! pull in other algorithms, and we need its exact behaviour on folded input
//! (`ü` → `ue`) to be tested alongside our name folding.
//!
//! **Chinese names.** A pinyin crate would add ~1 MB of tables for one
//! feature; instead Han characters are compared exactly (their phonetic key is
//! the characters themselves) and latin pinyin is compared lower-cased with
//! tone marks (`ā`, `ǎ` …, removed by Unicode decomposition) and tone
//! numbers (`zhang1`) removed. A record with Han characters and another with
//! only pinyin then agree only through the other fields.
//!
//! Jaro–Winkler follows Winkler (1990), prefix scale 0.1, prefix ≤ 4.

use unicode_normalization::UnicodeNormalization;

/// Lower-case letters and digits: German umlauts spelled out (`ü` → `ue`,
/// `ß` → `ss`), other accents, tone marks and pinyin tone numbers removed,
/// spaces, hyphens and punctuation dropped; Han characters kept. A name with
/// digits (test data) is its own phonetic key.
pub fn fold_name(s: &str) -> String {
    let mut pre = String::with_capacity(s.len());
    for c in s.chars().flat_map(char::to_lowercase) {
        match c {
            'ä' => pre.push_str("ae"),
            'ö' => pre.push_str("oe"),
            'ü' => pre.push_str("ue"),
            'ß' => pre.push_str("ss"),
            _ => pre.push(c),
        }
    }
    let chars: Vec<char> = pre.nfd().filter(|c| c.is_alphanumeric() && !is_combining(*c)).collect();
    // digits stay (records named "Person12" and "Person13" are different), except a
    // pinyin tone number: a single 1–5 right after a letter and not before another digit
    let mut out = String::with_capacity(chars.len());
    for (i, c) in chars.iter().enumerate() {
        let tone = matches!(c, '1'..='5')
            && i > 0
            && chars[i - 1].is_alphabetic()
            && !chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if !tone {
            out.push(*c);
        }
    }
    out
}

fn is_combining(c: char) -> bool {
    matches!(c as u32, 0x0300..=0x036F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF | 0xFE20..=0xFE2F)
}

/// Does the string contain Han (CJK) characters?
pub fn is_han(s: &str) -> bool {
    s.chars().any(|c| matches!(c as u32, 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FA1F))
}

/// Phonetic key of a folded name: Han characters as they are, otherwise the
/// Kölner Phonetik code.
pub fn phonetic(folded: &str) -> String {
    if is_han(folded) || folded.chars().any(|c| c.is_ascii_digit()) {
        folded.to_owned()
    } else {
        koelner(folded)
    }
}

/// Kölner Phonetik code of a (folded, lower-case) word.
pub fn koelner(s: &str) -> String {
    let cs: Vec<char> = s.chars().filter(char::is_ascii_alphabetic).map(|c| c.to_ascii_uppercase()).collect();
    let mut raw: Vec<u8> = Vec::with_capacity(cs.len() * 2);
    for (i, &c) in cs.iter().enumerate() {
        let prev = if i > 0 { cs.get(i - 1).copied() } else { None };
        let next = cs.get(i + 1).copied();
        let code: &[u8] = match c {
            'A' | 'E' | 'I' | 'J' | 'O' | 'U' | 'Y' => b"0",
            'H' => b"",
            'B' => b"1",
            'P' => {
                if next == Some('H') {
                    b"3"
                } else {
                    b"1"
                }
            }
            'D' | 'T' => {
                if matches!(next, Some('C' | 'S' | 'Z')) {
                    b"8"
                } else {
                    b"2"
                }
            }
            'F' | 'V' | 'W' => b"3",
            'G' | 'K' | 'Q' => b"4",
            'C' => {
                let hard = if i == 0 {
                    matches!(next, Some('A' | 'H' | 'K' | 'L' | 'O' | 'Q' | 'R' | 'U' | 'X'))
                } else {
                    matches!(next, Some('A' | 'H' | 'K' | 'O' | 'Q' | 'U' | 'X')) && !matches!(prev, Some('S' | 'Z'))
                };
                if hard {
                    b"4"
                } else {
                    b"8"
                }
            }
            'X' => {
                if matches!(prev, Some('C' | 'K' | 'Q')) {
                    b"8"
                } else {
                    b"48"
                }
            }
            'L' => b"5",
            'M' | 'N' => b"6",
            'R' => b"7",
            'S' | 'Z' => b"8",
            _ => b"",
        };
        raw.extend_from_slice(code);
    }
    raw.dedup();
    let mut out = String::with_capacity(raw.len());
    for (i, d) in raw.iter().enumerate() {
        if *d != b'0' || i == 0 {
            out.push(*d as char);
        }
    }
    out
}

/// Jaro–Winkler similarity in 0..=1.
pub fn jaro_winkler(a: &str, b: &str) -> f64 {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.is_empty() || b.is_empty() {
        return if a == b { 1.0 } else { 0.0 };
    }
    if a == b {
        return 1.0;
    }
    let window = (a.len().max(b.len()) / 2).saturating_sub(1);
    let mut b_used = vec![false; b.len()];
    let mut a_match = Vec::with_capacity(a.len());
    for (i, ca) in a.iter().enumerate() {
        let lo = i.saturating_sub(window);
        let hi = (i + window + 1).min(b.len());
        for j in lo..hi {
            if !b_used[j] && b[j] == *ca {
                b_used[j] = true;
                a_match.push(*ca);
                break;
            }
        }
    }
    let m = a_match.len();
    if m == 0 {
        return 0.0;
    }
    let b_match: Vec<char> = b.iter().zip(&b_used).filter(|(_, u)| **u).map(|(c, _)| *c).collect();
    let transpositions = a_match.iter().zip(&b_match).filter(|(x, y)| x != y).count() / 2;
    let m = m as f64;
    let jaro = (m / a.len() as f64 + m / b.len() as f64 + (m - transpositions as f64) / m) / 3.0;
    let prefix = a.iter().zip(&b).take(4).take_while(|(x, y)| x == y).count() as f64;
    jaro + prefix * 0.1 * (1.0 - jaro)
}

/// Birth date as digits: `1956-03-14` → `19560314` (`1956-03` → `195603`).
pub fn date_digits(s: &str) -> Option<String> {
    let d: String = s.chars().take(10).filter(char::is_ascii_digit).collect();
    matches!(d.len(), 4 | 6 | 8).then_some(d)
}

/// Are two full dates (8 digits) a typo of each other: day and month
/// swapped, or exactly one digit different?
pub fn date_typo(a: &str, b: &str) -> bool {
    if a.len() != 8 || b.len() != 8 || a == b {
        return false;
    }
    let swapped = format!("{}{}{}", &a[..4], &a[6..8], &a[4..6]);
    if swapped == b {
        return true;
    }
    a.bytes().zip(b.bytes()).filter(|(x, y)| x != y).count() == 1
}

/// Phone key: the last 8 digits (shorter numbers are not compared).
pub fn phone_key(s: &str) -> Option<String> {
    let d: String = s.chars().filter(char::is_ascii_digit).collect();
    (d.len() >= 6).then(|| d[d.len().saturating_sub(8)..].to_owned())
}

/// Postcode key: upper-case alphanumerics before a `-` (ZIP+4 → ZIP).
pub fn postcode_key(s: &str) -> Option<String> {
    let head = s.split('-').next().unwrap_or("");
    let k: String = head.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_uppercase()).collect();
    (!k.is_empty()).then_some(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn koelner_reference_examples() {
        // examples from Postel (1969) as commonly cited
        assert_eq!(koelner(&fold_name("Wikipedia")), "3412");
        assert_eq!(koelner(&fold_name("Müller-Lüdenscheidt")), "65752682");
        assert_eq!(koelner(&fold_name("Breschnew")), "17863");
        // spelling variants share a code
        for (a, b) in [("Müller", "Mueller"), ("Müller", "Muller"), ("Meyer", "Maier"), ("Schmidt", "Schmitt"), ("Fischer", "Vischer")] {
            assert_eq!(koelner(&fold_name(a)), koelner(&fold_name(b)), "{a} / {b}");
        }
        assert_ne!(koelner("mueller"), koelner("schmidt"));
        assert_eq!(koelner("christoph"), "47823");
    }

    #[test]
    fn folding_and_chinese() {
        assert_eq!(fold_name("Jürgen"), "juergen");
        assert_eq!(fold_name("Groß-Schmidt"), "grossschmidt");
        assert_eq!(fold_name("Agustín"), "agustin");
        assert_eq!(fold_name("Person218"), "person218");
        assert_ne!(phonetic(&fold_name("Person12")), phonetic(&fold_name("Person13")));
        assert_eq!(fold_name("Zhāng"), "zhang");
        assert_eq!(fold_name("zhang1"), "zhang");
        assert_eq!(fold_name("张伟"), "张伟");
        assert!(is_han("张伟") && !is_han("zhang"));
        assert_eq!(phonetic("张伟"), "张伟");
    }

    #[test]
    fn similarity_and_typos() {
        assert!((jaro_winkler("martha", "marhta") - 0.961).abs() < 0.001);
        assert!(jaro_winkler("mueller", "muller") > 0.9);
        assert!(jaro_winkler("schmidt", "weber") < 0.6);
        assert!(!date_typo("19560314", "19560341"));
        assert!(date_typo("19560304", "19560403"), "day/month swapped");
        assert!(date_typo("19560314", "19560315"), "one digit off");
        assert!(!date_typo("19560314", "19650314"), "two digits differ");
        assert_eq!(date_digits("1956-03-14"), Some("19560314".into()));
        assert_eq!(phone_key("+49 40 1234567"), Some("01234567".into()));
        assert_eq!(postcode_key("02134-1234"), Some("02134".into()));
    }
}
