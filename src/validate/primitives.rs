//! Primitive datatype rules (R4 `datatypes.html#primitive`, `json.html#primitive`):
//! the JSON kind each primitive takes (boolean → true/false; integer,
//! positiveInt, unsignedInt, decimal → number; all others → string) and the
//! lexical format of each, checked by hand-written matchers equivalent to the
//! spec's regular expressions (faster than a regex engine on the hot path).

use crate::fhir::datetime::{self, Precision};
use serde_json::Value;

/// Problem with a primitive value, as a message.
pub type PrimResult = Result<(), String>;

fn is_date(s: &str) -> bool {
    !s.contains('T') && datetime::parse(s).is_some()
}

fn time_ok(t: &str) -> bool {
    // hh:mm:ss(.f+)?
    let b = t.as_bytes();
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return false;
    }
    let num = |x: &[u8]| x.iter().all(u8::is_ascii_digit);
    if !num(&b[0..2]) || !num(&b[3..5]) || !num(&b[6..8]) {
        return false;
    }
    let (h, m, s) = (t[0..2].parse::<u32>().unwrap_or(99), t[3..5].parse::<u32>().unwrap_or(99), t[6..8].parse::<u32>().unwrap_or(99));
    if h > 23 || m > 59 || s > 60 {
        return false;
    }
    match &t[8..] {
        "" => true,
        f => f.starts_with('.') && f.len() > 1 && num(&f.as_bytes()[1..]),
    }
}

fn date_time_ok(s: &str, require_time: bool) -> bool {
    match s.split_once('T') {
        None => !require_time && is_date(s),
        Some(_) => {
            // with a time: seconds and an offset are required
            let Some(r) = datetime::parse(s) else { return false };
            if r.precision < Precision::Second {
                return false;
            }
            s.ends_with('Z') || {
                let tail = &s[s.len().saturating_sub(6)..];
                (tail.starts_with('+') || tail.starts_with('-')) && tail.as_bytes().get(3) == Some(&b':')
            }
        }
    }
}

fn base64_ok(s: &str) -> bool {
    let clean: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !clean.len().is_multiple_of(4) {
        return false;
    }
    let pad = clean.iter().rev().take_while(|&&b| b == b'=').count();
    if pad > 2 {
        return false;
    }
    clean[..clean.len() - pad].iter().all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

fn code_ok(s: &str) -> bool {
    // [^\s]+(\s[^\s]+)*
    !s.is_empty() && !s.starts_with(char::is_whitespace) && !s.ends_with(char::is_whitespace) && !s.contains("  ")
        && !s.contains(['\t', '\n', '\r'])
}

fn id_ok(s: &str) -> bool {
    crate::fhir::is_valid_id(s)
}

fn oid_ok(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:oid:") else { return false };
    let parts: Vec<&str> = rest.split('.').collect();
    parts.len() >= 2
        && matches!(parts[0], "0" | "1" | "2")
        && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (p.len() == 1 || !p.starts_with('0')))
}

fn uuid_ok(s: &str) -> bool {
    let Some(u) = s.strip_prefix("urn:uuid:") else { return false };
    let b = u.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        })
}

/// Check a primitive's JSON value against its type. `code` is the FHIR type
/// code or a FHIRPath System type URL.
pub fn check(code: &str, v: &Value) -> PrimResult {
    let code = code.strip_prefix("http://hl7.org/fhirpath/System.").map(|s| match s {
        "String" => "string",
        "Boolean" => "boolean",
        "Integer" => "integer",
        "Decimal" => "decimal",
        "Date" => "date",
        "DateTime" => "dateTime",
        "Time" => "time",
        _ => "string",
    }).unwrap_or(code);
    match code {
        "boolean" => match v {
            Value::Bool(_) => Ok(()),
            _ => Err(format!("boolean must be a JSON true or false, not {}", kind(v))),
        },
        "integer" | "positiveInt" | "unsignedInt" => {
            let Value::Number(n) = v else { return Err(format!("{code} must be a JSON number, not {}", kind(v))) };
            let text = n.to_string();
            let Ok(i) = text.parse::<i64>() else { return Err(format!("'{text}' is not an integer")) };
            if i < i32::MIN as i64 || i > i32::MAX as i64 {
                return Err(format!("{i} is out of range for {code}"));
            }
            match code {
                "positiveInt" if i < 1 => Err(format!("{i} is not a positiveInt (must be ≥ 1)")),
                "unsignedInt" if i < 0 => Err(format!("{i} is not an unsignedInt (must be ≥ 0)")),
                _ => Ok(()),
            }
        }
        "decimal" => match v {
            Value::Number(_) => Ok(()),
            _ => Err(format!("decimal must be a JSON number, not {}", kind(v))),
        },
        _ => {
            let Value::String(s) = v else { return Err(format!("{code} must be a JSON string, not {}", kind(v))) };
            if s.is_empty() {
                return Err("empty string values are not allowed; omit the element".into());
            }
            let ok = match code {
                "id" => id_ok(s),
                "code" => code_ok(s),
                "date" => is_date(s),
                "dateTime" => date_time_ok(s, false),
                "instant" => date_time_ok(s, true),
                "time" => time_ok(s),
                "base64Binary" => base64_ok(s),
                "oid" => oid_ok(s),
                "uuid" => uuid_ok(s),
                "uri" | "url" | "canonical" => !s.contains(char::is_whitespace),
                "string" | "markdown" => s.trim().len() == s.len() || !s.trim().is_empty(),
                _ => true,
            };
            if ok {
                Ok(())
            } else {
                Err(format!("'{}' is not a valid {code}", truncate(s)))
            }
        }
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s.to_owned()
    }
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formats() {
        assert!(check("date", &json!("2024-02-29")).is_ok());
        assert!(check("date", &json!("2023-02-29")).is_err());
        assert!(check("dateTime", &json!("2024-03-05T10:30:00+01:00")).is_ok());
        assert!(check("dateTime", &json!("2024-03-05T10:30+01:00")).is_err(), "seconds required");
        assert!(check("dateTime", &json!("2024-03-05T10:30:00")).is_err(), "offset required");
        assert!(check("instant", &json!("2024-03-05")).is_err());
        assert!(check("instant", &json!("2024-03-05T10:30:00.123Z")).is_ok());
        assert!(check("time", &json!("10:30:00")).is_ok());
        assert!(check("integer", &json!(1.5)).is_err());
        assert!(check("positiveInt", &json!(0)).is_err());
        assert!(check("boolean", &json!("true")).is_err());
        assert!(check("decimal", &json!("1.0")).is_err());
        assert!(check("id", &json!("a".repeat(65))).is_err());
        assert!(check("code", &json!(" x")).is_err());
        assert!(check("base64Binary", &json!("aGVsbG8=")).is_ok());
        assert!(check("base64Binary", &json!("%%%2@()()")).is_err());
        assert!(check("oid", &json!("urn:oid:1.2.276.0.76")).is_ok());
        assert!(check("uuid", &json!("urn:uuid:0b7c6f2e-8d27-4c3c-9d7e-000000000001")).is_ok());
        assert!(check("string", &json!("")).is_err());
        assert!(check("http://hl7.org/fhirpath/System.String", &json!("x")).is_ok());
    }
}
