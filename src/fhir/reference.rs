//! References (R4 `references.html`): splitting a literal reference into its
//! resource type and id — relative `Type/id[/_history/v]` or an absolute URL
//! ending in `Type/id`; contained (`#id`) and `urn:` references have neither.

/// (type, id) of a literal reference, when it has them.
pub fn parse(r: &str) -> (Option<String>, Option<String>) {
    if r.starts_with('#') || r.starts_with("urn:") {
        return (None, None);
    }
    if r.contains("://") {
        let parts: Vec<&str> = r.trim_end_matches('/').split('/').collect();
        let n = parts.len();
        let (t, i) = if n >= 4 && parts[n - 2] == "_history" {
            (parts[n - 4], parts[n - 3])
        } else if n >= 2 {
            (parts[n - 2], parts[n - 1])
        } else {
            ("", "")
        };
        if super::looks_like_type(t) && super::is_valid_id(i) {
            return (Some(t.to_owned()), Some(i.to_owned()));
        }
        return (None, None);
    }
    let parts: Vec<&str> = r.split('/').collect();
    match parts.as_slice() {
        [t, i] | [t, i, "_history", _] if super::looks_like_type(t) => (Some((*t).to_owned()), Some((*i).to_owned())),
        _ => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn forms() {
        assert_eq!(parse("Patient/1"), (Some("Patient".into()), Some("1".into())));
        assert_eq!(parse("Patient/1/_history/2"), (Some("Patient".into()), Some("1".into())));
        assert_eq!(parse("http://x.org/fhir/Patient/1"), (Some("Patient".into()), Some("1".into())));
        assert_eq!(parse("#c1"), (None, None));
        assert_eq!(parse("urn:uuid:1"), (None, None));
        assert_eq!(parse("patient/1"), (None, None));
    }
}
